"""The memory calculator: will a fine-tune fit on a GPU, and what takes the space?

    b = estimate("llama-2-7b", method="qlora", optimizer="adamw", seq_len=512, batch=1)
    b.total_gb, b.gb()               # the total; each part: weights, gradients, optimizer state, ... (GiB)
    fits(b, gpu_gb=24)               # True / False

``model`` is a published architecture's name (``labkit.lora.ARCHITECTURES``), an
:class:`~labkit.lora.ArchShape`, or a parameter count (then a Llama-like shape is assumed, see
:func:`shape_for_params`). Sizes are in GiB (2**30 bytes), the unit GPU memory is sold in.

The formulas (every term is a number of bytes):

- weights:     parameters x bytes per weight: 4 (fp32), 2 (bf16/fp16), 1 (int8), or for QLoRA's NF4
               with double quantisation 4.127 bits (QLoRA paper, section 3: 4 bits plus 0.127 bits of
               quantisation constants per parameter). LoRA/DoRA adapters add their own parameters at
               ``adapter_bytes`` (2: bf16, as QLoRA keeps them).
- gradients:   trainable parameters x bytes of the trainable weights (full: the weight dtype;
               adapters: ``adapter_bytes``).
- optimizer:   trainable parameters x bytes of state: AdamW 8 (two fp32 moments), 8-bit Adam 2
               (two 1-byte moments), SGD with momentum 4, plain SGD 0. With ``master_weights``
               (mixed precision that keeps an fp32 copy of 16-bit weights) add 4 more.
- activations: what the backward pass keeps, per block (Llama layout; values, then x bytes):
               batch x seq x (6 hidden + 2 kv_width + 4 intermediate) for the norms, projections and
               the gated MLP, plus batch x heads x seq^2 x 2 for the attention scores and
               probabilities when attention is not fused (``flash_attention=False``). With gradient
               checkpointing only each block's input (batch x seq x hidden) is kept, plus one
               block's full set during recomputation. Then the logits and their gradient in fp32:
               2 x batch x seq x vocab x 4. A rule of thumb in the spirit of Korthikanti et al.
               2022 (arXiv:2205.05198), not an exact account of every temporary tensor.
- overhead:    ``overhead_gb`` for the CUDA context and allocator slack (default 1 GiB).

The tests check the formula against our own measured peak on the lab's model and against two
published points (QLoRA paper, Dettmers et al. 2023: LLaMA-65B fine-tuned on one 48 GB GPU with
QLoRA; 16-bit full fine-tuning of it needing more than 780 GB).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .lora import ARCHITECTURES, ArchShape, lora_parameter_count, total_parameter_count
from .plots import LabFigure, Panel, lab_layout

GIB = 2**30
METHODS = ("full", "lora", "qlora", "dora")
OPTIMIZERS = {"adamw": 8.0, "adamw-8bit": 2.0, "sgd-momentum": 4.0, "sgd": 0.0}
WEIGHT_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "int8": 1.0, "nf4": 4.127 / 8}
PARTS = ("weights", "gradients", "optimizer", "activations", "overhead")


@dataclass
class Breakdown:
    """Bytes per part of a training run's memory, with the inputs that produced them."""
    weights: float
    gradients: float
    optimizer: float
    activations: float
    overhead: float
    total_params: int
    trainable_params: int
    inputs: dict = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(getattr(self, p) for p in PARTS)

    @property
    def total_gb(self) -> float:
        return self.total / GIB

    def gb(self) -> dict[str, float]:
        """Each part in GiB."""
        return {p: getattr(self, p) / GIB for p in PARTS}


def shape_for_params(n_params: float, vocab: int = 32000) -> ArchShape:
    """A Llama-like shape with about ``n_params`` parameters: Llama models keep hidden ≈ 128 x
    layers and intermediate ≈ 2.6875 x hidden, so n ≈ 12.06 x layers x hidden^2 (+ embeddings)."""
    if not n_params or n_params <= 0:
        raise ValueError(f"model={n_params!r}: a parameter count must be positive")
    layers = max(1, round((n_params / (12.06 * 128**2)) ** (1 / 3)))
    hidden = max(64, round((n_params / (12.06 * layers)) ** 0.5 / 64) * 64)
    heads = max(1, hidden // 128)
    return ArchShape(f"llama-like-{n_params / 1e9:.3g}B", hidden=hidden,
                     intermediate=round(2.6875 * hidden / 64) * 64, layers=layers,
                     heads=heads, kv_heads=heads, vocab=vocab)


def resolve_arch(model) -> ArchShape:
    if isinstance(model, ArchShape):
        return model
    if isinstance(model, str):
        if model not in ARCHITECTURES:
            raise ValueError(f"model={model!r}: choose one of {sorted(ARCHITECTURES)}, an ArchShape "
                             "or a parameter count")
        return ARCHITECTURES[model]
    if isinstance(model, (int, float)):
        return shape_for_params(model)
    raise ValueError(f"model={model!r}: pass an architecture name, an ArchShape or a parameter count")


def activation_bytes(arch: ArchShape, seq_len: int, batch: int, bytes_per_value: float = 2,
                     gradient_checkpointing: bool = False, flash_attention: bool = True) -> float:
    """What the backward pass keeps for one micro-batch (see the module docstring)."""
    kv_width = arch.kv_heads * arch.head_size
    tokens = batch * seq_len
    per_block = tokens * (6 * arch.hidden + 2 * kv_width + 4 * arch.intermediate)
    if not flash_attention:
        per_block += 2 * batch * arch.heads * seq_len**2
    per_block *= bytes_per_value
    if gradient_checkpointing:
        blocks = arch.layers * tokens * arch.hidden * bytes_per_value + per_block
    else:
        blocks = arch.layers * per_block
    logits = 2 * tokens * arch.vocab * 4
    return blocks + logits


def estimate(model, method: str = "lora", optimizer: str = "adamw", seq_len: int = 512,
             batch: int = 1, r: int = 16, target_modules="all-linear", weight_dtype: str = "bf16",
             adapter_bytes: float = 2, activation_dtype: str | None = None,
             gradient_checkpointing: bool = False, flash_attention: bool = True,
             master_weights: bool = False, overhead_gb: float = 1.0,
             trainable_params: int | None = None) -> Breakdown:
    """Memory for fine-tuning ``model`` (name, ArchShape or parameter count) with ``method``
    (full, lora, qlora, dora) and ``optimizer`` (adamw, adamw-8bit, sgd-momentum, sgd)."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}: choose one of {METHODS}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer={optimizer!r}: choose one of {sorted(OPTIMIZERS)}")
    if weight_dtype not in WEIGHT_BYTES:
        raise ValueError(f"weight_dtype={weight_dtype!r}: choose one of {sorted(WEIGHT_BYTES)}")
    for name, v in (("seq_len", seq_len), ("batch", batch)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r}: must be a whole number of at least 1")
    if method == "full" and weight_dtype == "nf4":
        raise ValueError("weight_dtype='nf4' with method='full': 4-bit weights cannot be trained; use qlora")
    arch = resolve_arch(model)
    n = total_parameter_count(arch) if not isinstance(model, (int, float)) else int(model)
    base_bytes = WEIGHT_BYTES["nf4"] if method == "qlora" else WEIGHT_BYTES[weight_dtype]
    if method == "full":
        trainable = n if trainable_params is None else trainable_params
        grad_bytes = WEIGHT_BYTES[weight_dtype]
        weights = n * base_bytes
    else:
        trainable = (lora_parameter_count(arch, r, target_modules, dora=method == "dora")
                     if trainable_params is None else trainable_params)
        grad_bytes = adapter_bytes
        weights = n * base_bytes + trainable * adapter_bytes
    state = OPTIMIZERS[optimizer] + (4 if master_weights else 0)
    act_dtype = activation_dtype or ("bf16" if weight_dtype in ("nf4", "int8") else weight_dtype)
    acts = activation_bytes(arch, seq_len, batch, WEIGHT_BYTES.get(act_dtype, 2),
                            gradient_checkpointing, flash_attention)
    inputs = dict(model=model if isinstance(model, (str, int, float)) else arch.to_dict(),
                  arch=arch.name, method=method, optimizer=optimizer, seq_len=seq_len, batch=batch,
                  r=r, target_modules=target_modules, weight_dtype=weight_dtype,
                  adapter_bytes=adapter_bytes, activation_dtype=act_dtype,
                  gradient_checkpointing=gradient_checkpointing, flash_attention=flash_attention,
                  master_weights=master_weights, overhead_gb=overhead_gb)
    return Breakdown(weights=weights, gradients=trainable * grad_bytes, optimizer=trainable * state,
                     activations=acts, overhead=overhead_gb * GIB, total_params=n,
                     trainable_params=trainable, inputs=inputs)


def fits(breakdown: Breakdown, gpu_gb: float) -> bool:
    """Does the estimate fit in ``gpu_gb`` GiB of GPU memory?"""
    if gpu_gb <= 0:
        raise ValueError(f"gpu_gb={gpu_gb!r}: must be > 0")
    return breakdown.total_gb <= gpu_gb


# --- the widget -------------------------------------------------------------------------------

PART_COLORS = {"weights": "#7f7f7f", "gradients": "#d62728", "optimizer": "#ff7f0e",
               "activations": "#1f77b4", "overhead": "#c7c7c7"}
GPUS = {"T4 (16 GB)": 16, "RTX 4090 (24 GB)": 24, "A6000 (48 GB)": 48, "A100 (40 GB)": 40,
        "A100/H100 (80 GB)": 80, "H200 (141 GB)": 141}


def calculator_widget(model: str = "llama-2-7b", method: str = "qlora", optimizer: str = "adamw",
                      seq_len: int = 512, batch: int = 1, gpu: str = "RTX 4090 (24 GB)"):
    """Controls for model, method, optimizer, sequence length, batch and GPU; a stacked bar of
    what takes the memory for full, LoRA and QLoRA, with the chosen method's verdict.
    Returns an object with ``.controls`` (dict), ``.figure``, ``.breakdown``, ``.verdict`` and
    ``.widget``."""
    import ipywidgets as W

    class CalculatorWidget:
        pass

    self = CalculatorWidget()
    self.controls = {
        "model": W.Dropdown(options=list(ARCHITECTURES), value=model, description="model"),
        "method": W.ToggleButtons(options=list(METHODS[:3]), value=method, description="method"),
        "optimizer": W.Dropdown(options=list(OPTIMIZERS), value=optimizer, description="optimizer"),
        "seq_len": W.SelectionSlider(options=[128, 256, 512, 1024, 2048, 4096], value=seq_len,
                                     description="seq len"),
        "batch": W.SelectionSlider(options=[1, 2, 4, 8, 16, 32], value=batch, description="batch"),
        "gradient_checkpointing": W.Checkbox(value=False, description="gradient checkpointing"),
        "gpu": W.Dropdown(options=list(GPUS), value=gpu, description="GPU"),
    }
    self.figure = lab_layout(LabFigure(), 420, top=70, legend_below=-0.2, barmode="stack", xaxis_title="method",
                             yaxis_title="memory (GiB)")
    for part in PARTS:
        self.figure.add_bar(x=list(METHODS[:3]), y=[0, 0, 0], name=part, marker_color=PART_COLORS[part])
    self.figure.add_scatter(x=list(METHODS[:3]), y=[0, 0, 0], mode="lines", name="GPU memory",
                            line=dict(color="black", dash="dash"))
    self.verdict = W.HTML()

    def update(*_):
        c = {k: w.value for k, w in self.controls.items()}
        gpu_gb = GPUS[c["gpu"]]
        kw = dict(optimizer=c["optimizer"], seq_len=c["seq_len"], batch=c["batch"],
                  gradient_checkpointing=c["gradient_checkpointing"])
        per_method = {m: estimate(c["model"], method=m, **kw) for m in METHODS[:3]}
        self.breakdown = per_method[c["method"]]
        with self.figure.batch_update():
            for i, part in enumerate(PARTS):
                self.figure.data[i].y = [b.gb()[part] for b in per_method.values()]
            self.figure.data[-1].y = [gpu_gb] * 3
            verdicts = ", ".join(f"{m} {'fits' if fits(b, gpu_gb) else 'does not fit'}"
                                 for m, b in per_method.items())
            self.figure.layout.title = f"{c['model']} on {c['gpu']}: {verdicts}"
        b = self.breakdown
        ok = fits(b, gpu_gb)
        biggest = max(b.gb(), key=b.gb().get)
        self.verdict.value = (f"<b>{c['method']}: {b.total_gb:.1f} GiB of {gpu_gb} GiB — "
                              f"{'fits' if ok else 'does not fit'}</b>; the largest part is "
                              f"{biggest} ({b.gb()[biggest]:.1f} GiB); trainable parameters "
                              f"{b.trainable_params / 1e6:,.1f}M of {b.total_params / 1e9:.2f}B")

    for w in self.controls.values():
        w.observe(update, names="value")
    update()
    self.widget = Panel([W.HBox([self.controls["model"], self.controls["gpu"], self.controls["optimizer"]]),
                         self.controls["method"],
                         W.HBox([self.controls["seq_len"], self.controls["batch"],
                                 self.controls["gradient_checkpointing"]]),
                         self.verdict, self.figure])
    return self
