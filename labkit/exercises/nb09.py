"""Exercises for notebook 09 (QLoRA): what the quantisation constants cost per weight, what our model
weighs in 4 bits, and the largest batch that fits a GPU. The checks quantise the learner's weight with
bitsandbytes, count the learner's model's layers, and run the memory calculator themselves.

On this CPU, bitsandbytes' NF4 functions run as in the notebook (``quant.round_trip``); nothing
here needs a GPU or a 4-bit load."""
from __future__ import annotations

from . import Exercise
from .checks import close, number, whole_number

SETUP = """
import torch
import labkit
from labkit import quantization as quant, calculator
model, tok = labkit.load_model()
W = model.model.layers[0].self_attn.q_proj.weight.detach()
"""


# --- q1 -------------------------------------------------------------------------------------------

BLOCK1 = 256


def _bits(W, blocksize: int) -> float:
    from labkit import quantization as quant

    b = quant.round_trip(W, blocksize=blocksize)["bytes"]
    return 8 * (b["weights"] + b["constants"]) / W.numel()


def _check_q1(answer, W):
    if (problem := number(answer, "bits per weight")) is not None:
        return problem
    truth = _bits(W, BLOCK1)
    if close(answer, truth, rel=1e-4):
        return None
    if close(answer, 4.0, rel=1e-4):
        return ("4 bits is the codes alone; each block also stores its absmax constant (an fp32 number), "
                "which adds to the bits per weight")
    if close(answer, truth / 8, rel=1e-4):
        return "that is bytes per weight; give bits (x 8)"
    if close(answer, truth - 4, rel=1e-4):
        return "that is the constants' share alone; add the 4 bits of each weight's code"
    for other in (64, 128, 512):
        if close(answer, _bits(W, other), rel=1e-4):
            return f"that is the cost with blocks of {other}; the exercise asks for blocks of {BLOCK1}"
    if close(answer, 4 + 8 / BLOCK1 + 32 / (BLOCK1 * 256), rel=1e-3):
        return ("that is with double quantisation (8-bit constants); round_trip's default stores them "
                "in fp32, as the exercise asks")
    return (f"{answer:.4g} bits is not what round_trip(W, blocksize={BLOCK1}) stores: (bytes of the codes + "
            "bytes of the constants) x 8 / number of weights")


q1 = Exercise(
    name="Exercise 1",
    level="easy",
    question=f"""
Quantise `W` (the first layer's query projection) to NF4 with **blocks of {BLOCK1}** instead of 64:
`rt = quant.round_trip(W, blocksize={BLOCK1})`. `rt["bytes"]` holds the bytes of the 4-bit codes and of
the per-block constants. How many **bits per weight** does this storage take, constants included?
(Compare with blocks of 64: what do larger blocks save, and what do they cost? `rt["blocks"]` has the error.)
""",
    check_answer=_check_q1,
    hint_text=f"b = quant.round_trip(W, blocksize={BLOCK1})['bytes']; 8 * (b['weights'] + b['constants']) / W.numel().",
    solution_code=f"""
b = quant.round_trip(W, blocksize={BLOCK1})["bytes"]
answer = 8 * (b["weights"] + b["constants"]) / W.numel()
""",
    wrong=[f"""b = quant.round_trip(W, blocksize={BLOCK1})["bytes"]
answer = 8 * b["weights"] / W.numel()""",
           """b = quant.round_trip(W, blocksize=64)["bytes"]
answer = 8 * (b["weights"] + b["constants"]) / W.numel()""",
           f"""b = quant.round_trip(W, blocksize={BLOCK1})["bytes"]
answer = (b["weights"] + b["constants"]) / W.numel()"""],
    context_names=("W",),
)


# --- q2 -------------------------------------------------------------------------------------------

def _parts(model) -> tuple[int, int]:
    """(weights of the blocks' linear layers, every other parameter) of ``model``: what
    bitsandbytes quantises and what it leaves (embeddings, norms; lm_head is tied to the embeddings)."""
    import torch

    linear = sum(m.weight.numel() for n, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and "lm_head" not in n)
    total = sum(p.numel() for p in model.parameters())
    return linear, total - linear


def _check_q2(answer, model):
    from labkit import calculator

    if (problem := number(answer, "the size in MiB")) is not None:
        return problem
    linear, rest = _parts(model)
    truth = (linear * calculator.NF4_BYTES + rest * 4) / 2**20
    if close(answer, truth, rel=2e-3):
        return None
    if close(answer, truth * 2**20, rel=2e-3):
        return "that is in bytes; give MiB (divide by 2**20)"
    if close(answer, truth * 2**20 / 1e6, rel=2e-3):
        return "that is in MB (10**6 bytes); give MiB (2**20 bytes)"
    if close(answer, (linear + rest) * calculator.NF4_BYTES / 2**20, rel=2e-3):
        return ("you put every parameter in NF4; bitsandbytes quantises only the blocks' linear layers: "
                "the embeddings (a fifth of this model) and the norms stay in fp32")
    if close(answer, (linear * 0.5 + rest * 4) / 2**20, rel=2e-3):
        return (f"you priced NF4 at 4 bits; with its quantisation constants it is {8 * calculator.NF4_BYTES:.3f} "
                "bits a weight (calculator.NF4_BYTES bytes)")
    if close(answer, (linear * calculator.NF4_BYTES + rest * 2) / 2**20, rel=2e-3):
        return "you kept the unquantised parts in 2 bytes (bf16); our model is loaded in fp32: 4 bytes"
    if close(answer, (linear + rest) * 4 / 2**20, rel=2e-3):
        return "that is the fp32 model; the exercise asks for its size with the linear layers in NF4"
    return (f"{answer:.1f} MiB is {100 * (answer / truth - 1):+.1f}% off: the linear layers of the blocks "
            "(not lm_head) at calculator.NF4_BYTES bytes a weight, plus every other parameter at 4 bytes")


q2 = Exercise(
    name="Exercise 2",
    level="medium",
    question="""
**Price our model in 4 bits by hand**, as the calculator does: the linear layers of the transformer
blocks are stored in NF4 at `calculator.NF4_BYTES` bytes a weight (4 bits plus double-quantised
constants); every other parameter (the embeddings, which `lm_head` shares, and the norms) stays in fp32,
4 bytes. Count both parts on `model` and give the total in **MiB**. How close is it to what section 3
measured by loading the model in 4 bits?
""",
    check_answer=_check_q2,
    hint_text=("linear = sum(m.weight.numel() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) "
               "and 'lm_head' not in n); rest = all parameters - linear; (linear * calculator.NF4_BYTES + rest * 4) / 2**20."),
    solution_code="""
linear = sum(m.weight.numel() for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and "lm_head" not in n)
rest = sum(p.numel() for p in model.parameters()) - linear
answer = (linear * calculator.NF4_BYTES + rest * 4) / 2**20
""",
    wrong=["""answer = sum(p.numel() for p in model.parameters()) * calculator.NF4_BYTES / 2**20""",
           """linear = sum(m.weight.numel() for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and "lm_head" not in n)
rest = sum(p.numel() for p in model.parameters()) - linear
answer = (linear * 0.5 + rest * 4) / 2**20""",
           """linear = sum(m.weight.numel() for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and "lm_head" not in n)
rest = sum(p.numel() for p in model.parameters()) - linear
answer = linear * calculator.NF4_BYTES + rest * 4"""],
    context_names=("model",),
)


# --- q3 -------------------------------------------------------------------------------------------

MODEL3, GPU3, SEQ3, R3 = "llama-2-13b", "RTX 4090", 1024, 16


def _need(batch: int, method: str = "qlora", checkpointing: bool = True) -> float:
    from labkit import calculator

    return calculator.estimate(MODEL3, method, seq_len=SEQ3, batch=batch, r=R3,
                               gradient_checkpointing=checkpointing).total_gb


def _largest(gib: float, method: str = "qlora", checkpointing: bool = True) -> int:
    batch = 0
    while _need(batch + 1, method, checkpointing) <= gib:
        batch += 1
    return batch


def _check_q3(answer):
    from labkit import calculator

    if (problem := whole_number(answer, "the batch size")) is not None:
        return problem
    answer = int(answer)
    gpu = calculator.GPUS[calculator.gpu_label(GPU3)]
    truth = _largest(gpu)
    if answer == truth:
        return None
    if answer < 1:
        return f"batch 1 needs {_need(1):.1f} GiB, which fits the {GPU3}'s {gpu:.2f} GiB: the answer is at least 1"
    if answer == _largest(gpu, checkpointing=False) and answer < truth:
        return ("that is without gradient checkpointing; the exercise turns it on "
                "(gradient_checkpointing=True: only each block's input is kept)")
    if answer > truth:
        return (f"batch {answer} needs {_need(answer):.2f} GiB, more than the {GPU3}'s {gpu:.2f} GiB "
                "(the GiB its driver reports)")
    return (f"batch {answer} fits ({_need(answer):.2f} GiB), but so does batch {answer + 1} "
            f"({_need(answer + 1):.2f} GiB of {gpu:.2f}): give the largest")


q3 = Exercise(
    name="Exercise 3",
    level="harder",
    question=f"""
**The largest batch that fits.** You want to QLoRA-tune **{MODEL3}** (r={R3} on all linear layers,
AdamW, sequences of **{SEQ3}** tokens, **gradient checkpointing on**) on an **{GPU3}**. According to
`calculator.estimate` and the GPU's memory in `calculator.GPUS`, what is the **largest micro-batch** (a whole
number of sequences) that fits? Which part of the memory grows with the batch?
""",
    check_answer=_check_q3,
    hint_text=(f"gpu = calculator.GPUS[calculator.gpu_label('{GPU3}')]; increase batch while "
               f"calculator.estimate('{MODEL3}', 'qlora', seq_len={SEQ3}, batch=batch + 1, r={R3}, "
               "gradient_checkpointing=True).total_gb <= gpu."),
    solution_code=f"""
gpu = calculator.GPUS[calculator.gpu_label("{GPU3}")]
def need(batch):
    return calculator.estimate("{MODEL3}", "qlora", seq_len={SEQ3}, batch=batch, r={R3},
                               gradient_checkpointing=True).total_gb
batch = 0
while need(batch + 1) <= gpu:
    batch += 1
answer = batch
""",
    wrong=[f"""gpu = calculator.GPUS[calculator.gpu_label("{GPU3}")]
batch = 0
while calculator.estimate("{MODEL3}", "qlora", seq_len={SEQ3}, batch=batch + 1, r={R3}).total_gb <= gpu:
    batch += 1
answer = batch""",
           f"""gpu = calculator.GPUS[calculator.gpu_label("{GPU3}")]
batch = 1
while calculator.estimate("{MODEL3}", "qlora", seq_len={SEQ3}, batch=batch, r={R3},
                          gradient_checkpointing=True).total_gb <= gpu:
    batch += 1
answer = batch""",
           f"""batch = 0
while calculator.estimate("{MODEL3}", "qlora", seq_len={SEQ3}, batch=batch + 1, r={R3},
                          gradient_checkpointing=True).total_gb <= 16:
    batch += 1
answer = batch"""],
    context_names=(),
)
