"""The memory calculator against published points and against our own measured peak."""
import gc

import pytest

from labkit import calculator as calc

GB = 1e9


def test_qlora_fits_65b_on_one_48gb_gpu():
    # QLoRA paper (Dettmers et al. 2023): LLaMA-65B fine-tuned on a single 48 GB GPU
    # (LoRA r=64 on all linear layers, gradient checkpointing, paged AdamW; micro-batch 1, 512 tokens)
    b = calc.estimate("llama-65b", "qlora", "adamw", seq_len=512, batch=1, r=64, gradient_checkpointing=True)
    assert calc.fits(b, 48)
    assert b.gb()["weights"] > 30          # 4-bit weights alone take most of it


def test_full_finetuning_of_65b_needs_more_than_780_gb():
    # QLoRA paper, introduction: "regular 16-bit finetuning of a LLaMA 65B parameter model requires
    # more than 780 GB of GPU memory" (2 bytes weights + 2 gradients + 8 Adam states = 12 bytes/param)
    b = calc.estimate("llama-65b", "full", "adamw", seq_len=512, batch=1, gradient_checkpointing=True)
    assert b.total > 780 * GB
    assert b.total < 900 * GB
    assert not calc.fits(b, 80)


def test_breakdown_moves_the_right_way():
    kw = dict(optimizer="adamw", seq_len=512, batch=1)
    full, lora, qlora = (calc.estimate("llama-2-7b", m, **kw) for m in ("full", "lora", "qlora"))
    assert full.total > lora.total > qlora.total
    assert full.optimizer == 8 * full.total_params
    assert calc.estimate("llama-2-7b", "full", "adamw-8bit").optimizer == 2 * full.total_params
    assert calc.estimate("llama-2-7b", "full", "sgd").optimizer == 0
    big = calc.estimate("llama-2-7b", "lora", batch=8, seq_len=512)
    assert big.activations > lora.activations and big.weights == lora.weights
    ckpt = calc.estimate("llama-2-7b", "lora", batch=8, seq_len=512, gradient_checkpointing=True)
    assert ckpt.activations < big.activations
    by_count = calc.estimate(7e9, "lora")
    assert 0.7 < by_count.total / lora.total < 1.3   # a Llama-like shape is guessed from the count


def test_bad_inputs_are_refused():
    for kwargs, word in [(dict(method="adapters"), "method"), (dict(optimizer="adam9"), "optimizer"),
                         (dict(seq_len=0), "seq_len"), (dict(batch=1.5), "batch")]:
        with pytest.raises(ValueError, match=word):
            calc.estimate("llama-2-7b", **kwargs)
    with pytest.raises(ValueError, match="model"):
        calc.estimate("gpt-9")
    with pytest.raises(ValueError, match="gpu_gb"):
        calc.fits(calc.estimate("llama-2-7b"), 0)


def test_widget_answers_when_a_control_changes():
    w = calc.calculator_widget("llama-2-7b", method="qlora", gpu="RTX 4090 (24 GB)")
    assert "fits" in w.verdict.value and "does not fit" not in w.verdict.value
    before = [list(t.y) for t in w.figure.data]
    w.controls["model"].value = "llama-2-70b"
    assert "does not fit" in w.verdict.value
    assert [list(t.y) for t in w.figure.data] != before


# Our own measurement. On the CPU the peak is the process's resident memory, sampled, so the
# comparison is: (peak during training) - (memory of the process with its libraries loaded but no
# model) against the calculator's weights + gradients + optimizer + activations (no CUDA overhead).
# Measured on the 2-core lab machine (2026-11-29, LoRA r=8, batch 2 x 64 tokens, fp32): 884 MiB measured,
# 745 MiB estimated (-16%); the gap is allocator slack, the trainer's own buffers and temporary tensors
# the formula does not list. The stated tolerance: the estimate within 35% of the measurement.
TOLERANCE = 0.35


@pytest.mark.model
def test_calculator_against_measured_peak_on_the_lab_model():
    import labkit
    from labkit.memory import PeakMemory

    recs = [r for r in labkit.read_jsonl(labkit.data_path("instructions.jsonl"), "messages")
            if r["split"] == "train"][:8]
    gc.collect()
    baseline = PeakMemory.rss_mb()
    model, tok = labkit.load_model()
    res = labkit.train(model, tok, recs, method="lora", steps=1, batch_size=2, max_length=64,
                       mixed_precision="no", live=False)
    measured = res.history.peak_memory_mb - baseline
    b = calc.estimate("smollm2-135m", "lora", "adamw", seq_len=64, batch=2, r=8,
                      weight_dtype="fp32", adapter_bytes=4, overhead_gb=0)
    estimated = b.total / 2**20
    print(f"measured {measured:.0f} MiB above the bare process, estimated {estimated:.0f} MiB "
          f"({100 * (estimated - measured) / measured:+.0f}%)")
    assert abs(estimated - measured) / measured < TOLERANCE, (estimated, measured)
