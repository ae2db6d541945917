"""The memory calculator: will a fine-tune fit on a GPU, and what takes the space?

    b = estimate("llama-2-7b", method="qlora", optimizer="adamw", seq_len=512, batch=1)
    b.total_gb, b.gb(), b.text()     # the total; each part: weights, gradients, optimizer state, ... (GiB)
    fits(b, gpu_gb=24)               # True / False

``model`` is an architecture's name (``labkit.lora.ARCHITECTURES``, a registry name such as
``smollm2-135m-instruct``, or a hub id such as ``meta-llama/Llama-2-7b-hf``), an
:class:`~labkit.lora.ArchShape`, or a bare parameter count: then a Llama-like shape is assumed
(:func:`shape_for_params`) and ``Breakdown.shape_note`` says so. Every size is in GiB (2**30 bytes),
GPU memory included (``GPUS``: the total the driver reports, which for a card sold as "16 GB"
is 15 GiB).

The formulas (every term is a number of bytes), with the dtypes the libraries really use:

- weights:     full, LoRA, DoRA: parameters x bytes of ``weight_dtype`` (4 fp32, 2 bf16/fp16).
               QLoRA: bitsandbytes quantises only the blocks' linear layers, to NF4 with double
               quantisation, 4.127 bits a weight (QLoRA paper, section 3: 4 bits plus 0.127 bits of
               constants); the embeddings, an untied output head, the norms and any biases stay
               unquantised, in ``weight_dtype`` as loaded, and PEFT's
               ``prepare_model_for_kbit_training`` (which ``labkit.train`` and the exported
               ``train.py``, unsharded, call) casts them to fp32 (``upcast_unquantized=True``).
               Adapters add their own parameters at ``adapter_bytes``: 4 for LoRA and DoRA (PEFT's
               ``autocast_adapter_dtype=True`` keeps them in fp32 even on a bf16 base), 2 for QLoRA
               (TRL's SFTTrainer casts a 4-bit model's adapters to bf16, as the QLoRA paper does).
- gradients:   trainable parameters x bytes of the trainable weights (full: ``weight_dtype``;
               adapters: ``adapter_bytes``).
- optimizer:   trainable parameters x bytes of state: AdamW 8 (two fp32 moments), 8-bit Adam 2
               (two 1-byte moments), SGD with momentum 4, plain SGD 0. ``master_weights`` adds the
               fp32 copy of 16-bit trainable weights that mixed precision keeps, 4 more. Its
               default is on for full fine-tuning in bf16/fp16: 2 + 2 + 8 + 4 = 16 bytes per
               parameter, the ZeRO paper's (Rajbhandari et al. 2020) and PyTorch mixed precision's
               accounting (fp32 weights, gradients and moments: also 16). ``master_weights=False``
               gives the QLoRA paper's 12 (16-bit weights and gradients, fp32 moments), which is
               what an optimizer keeping fp32 moments for bf16 weights without a master copy
               allocates.
- activations: what the backward pass keeps, per block (values, then x bytes of
               ``activation_dtype``, default ``weight_dtype``): batch x seq x (6 hidden + 2 kv_width
               + k intermediate) for the norms, projections and the MLP, with k = 4 for a gated
               MLP (SwiGLU: gate, up, their activation and product) and 2 for a plain one (GeLU:
               its input and output), ``ArchShape.mlp``; plus batch x heads x seq^2 x 2 for the
               attention scores and probabilities when attention is not fused
               (``flash_attention=False``). With gradient checkpointing only each block's input
               (batch x seq x hidden) is kept, plus one block's full set during recomputation. Then
               the vocabulary-sized tensors in fp32, 3 x batch x seq x vocab x 4: as the backward
               pass starts, cross-entropy's saved log-probabilities, their gradient and the logits'
               gradient are alive together (torch's memory profiler on the lab's model). A rule of
               thumb in the spirit of Korthikanti et al. 2022 (arXiv:2205.05198), not an exact
               account of every temporary tensor.
- overhead:    ``overhead_gb`` GiB for the CUDA context and allocator slack (default 1).

Not counted: torch's AdamW keeps its moments in the dtype of the weights it steps (so TRL's bf16
QLoRA adapters have bf16 moments, a few MiB less than counted here); temporary tensors of the
optimizer step and of 4-bit layers dequantising; the trainer's own objects; and
``labkit.train``'s copy of the trainable weights, kept to restore them after a divergence
(``labkit.guards``; up to 4 GiB, so for full fine-tuning of a small model another 4 bytes a
parameter, in the CPU's memory). ``labkit.train`` runs with gradient checkpointing as its profile says
(on in ``gpu``, TRL's default; off in ``cpu`` and ``smoke``): compare its runs with the same setting.

The tests hold the formulas against published points (QLoRA paper, Dettmers et al. 2023:
LLaMA-65B fine-tuned on one 48 GB GPU with QLoRA; 16-bit full fine-tuning of it needing more than
780 GB) and against what the lab's real model measures: the 4-bit model's bytes, a saved adapter's
file, and the peak memory of a training step per method.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .lora import (ARCHITECTURES, ArchShape, block_linear_parameter_count, lora_parameter_count,
                   total_parameter_count)
from .plots import LabFigure, Panel, lab_layout

GIB = 2**30
METHODS = ("full", "lora", "qlora", "dora")
OPTIMIZERS = {"adamw": 8.0, "adamw-8bit": 2.0, "sgd-momentum": 4.0, "sgd": 0.0}
WEIGHT_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0}
NF4_BYTES = 4.127 / 8          # NF4, blocks of 64, double-quantised constants
ADAPTER_BYTES = {"lora": 4.0, "dora": 4.0, "qlora": 2.0}
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
    arch: ArchShape | None = None
    shape_note: str = ""           # set when the shape was assumed from a bare parameter count

    @property
    def total(self) -> float:
        return sum(getattr(self, p) for p in PARTS)

    @property
    def total_gb(self) -> float:
        return self.total / GIB

    def gb(self) -> dict[str, float]:
        """Each part in GiB."""
        return {p: getattr(self, p) / GIB for p in PARTS}

    @property
    def adapter_size(self) -> float:
        """Bytes of the adapter weights alone (0 for full fine-tuning): what PEFT's
        ``save_pretrained`` writes to ``adapter_model.safetensors``, less the file's small header."""
        ab = self.inputs.get("adapter_bytes")
        return 0.0 if ab is None else self.trainable_params * ab

    def text(self) -> str:
        """One line: each part and the total, in GiB (and the assumed shape, if any)."""
        parts = ", ".join(f"{k} {v:.2f}" for k, v in self.gb().items())
        return f"{parts}; total {self.total_gb:.2f} GiB" + (f" ({self.shape_note})" if self.shape_note else "")


def shape_for_params(n_params: float, vocab: int = 32000) -> ArchShape:
    """A Llama-like shape with about ``n_params`` parameters: Llama models keep hidden ≈ 128 x
    layers and intermediate ≈ 2.6875 x hidden, so n ≈ 12.06 x layers x hidden^2 (+ embeddings).
    Only a fallback for a bare number: small models are wider and shallower than this rule."""
    if not n_params or n_params <= 0:
        raise ValueError(f"model={n_params!r}: a parameter count must be positive")
    layers = max(1, round((n_params / (12.06 * 128**2)) ** (1 / 3)))
    hidden = max(64, round((n_params / (12.06 * layers)) ** 0.5 / 64) * 64)
    heads = max(1, hidden // 128)
    return ArchShape(f"llama-like-{n_params / 1e9:.3g}B", hidden=hidden,
                     intermediate=round(2.6875 * hidden / 64) * 64, layers=layers,
                     heads=heads, kv_heads=heads, vocab=vocab)


def architecture_name(name: str) -> str | None:
    """The ``ARCHITECTURES`` key for a name as people write it: any case, with or without the
    hub owner ("meta-llama/Llama-2-7b-hf"), a ``Meta-`` prefix, or an ``-Instruct``, ``-chat``,
    ``-hf`` or ``-v0.1`` ending (a chat version shares its base model's shape). None if unknown."""
    key = str(name).strip().lower().rsplit("/", 1)[-1]
    key = key.removeprefix("meta-")
    while True:
        if key in ARCHITECTURES:
            return key
        for suffix in ("-instruct", "-chat", "-hf", "-it", "-v0.1"):
            if key.endswith(suffix):
                key = key[: -len(suffix)]
                break
        else:
            return None


def resolve_arch(model) -> ArchShape:
    """The shape for ``model``: a name (see :func:`architecture_name`), an ArchShape, or a count."""
    if isinstance(model, ArchShape):
        return model
    if isinstance(model, str):
        key = architecture_name(model)
        if key is None:
            raise ValueError(f"model={model!r}: choose one of {sorted(ARCHITECTURES)} (any case, a hub id "
                             "or an -Instruct version too), an ArchShape or a parameter count")
        return ARCHITECTURES[key]
    if isinstance(model, (int, float)) and not isinstance(model, bool):
        return shape_for_params(model)
    raise ValueError(f"model={model!r}: pass an architecture name, an ArchShape or a parameter count")


def shape_note(model, arch: ArchShape) -> str:
    """A sentence when ``arch`` was assumed from a bare parameter count, else ''."""
    if isinstance(model, (int, float)) and not isinstance(model, bool):
        return (f"shape assumed: a Llama-like {arch.layers} layers x {arch.hidden} hidden for "
                f"{model / 1e9:.3g}B parameters; name the architecture for exact figures")
    return ""


def activation_bytes(arch: ArchShape, seq_len: int, batch: int, bytes_per_value: float = 2,
                     gradient_checkpointing: bool = False, flash_attention: bool = True) -> float:
    """What the backward pass keeps for one micro-batch (see the module docstring)."""
    kv_width = arch.kv_heads * arch.head_size
    tokens = batch * seq_len
    mlp_values = 4 if arch.mlp == "gated" else 2
    per_block = tokens * (6 * arch.hidden + 2 * kv_width + mlp_values * arch.intermediate)
    if not flash_attention:
        per_block += 2 * batch * arch.heads * seq_len**2
    per_block *= bytes_per_value
    if gradient_checkpointing:
        blocks = arch.layers * tokens * arch.hidden * bytes_per_value + per_block
    else:
        blocks = arch.layers * per_block
    logits = 3 * tokens * arch.vocab * 4   # log-probabilities, their gradient, the logits' gradient
    return blocks + logits


def estimate(model, method: str = "lora", optimizer: str = "adamw", seq_len: int = 512,
             batch: int = 1, r: int = 16, target_modules="all-linear", weight_dtype: str = "bf16",
             adapter_bytes: float | None = None, activation_dtype: str | None = None,
             gradient_checkpointing: bool = False, flash_attention: bool = True,
             master_weights: bool | None = None, upcast_unquantized: bool = True,
             overhead_gb: float = 1.0, trainable_params: int | None = None) -> Breakdown:
    """Memory for fine-tuning ``model`` (name, ArchShape or parameter count) with ``method``
    (full, lora, qlora, dora) and ``optimizer`` (adamw, adamw-8bit, sgd-momentum, sgd).

    ``weight_dtype`` is the dtype the model is loaded in (for QLoRA: that of the unquantised
    parts). ``adapter_bytes`` defaults to 4 for LoRA/DoRA, 2 for QLoRA (see the module
    docstring). ``master_weights`` defaults to on for full fine-tuning in bf16/fp16 (16 bytes per
    parameter with AdamW); ``False`` gives the QLoRA paper's 12-byte accounting."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}: choose one of {METHODS}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer={optimizer!r}: choose one of {sorted(OPTIMIZERS)}")
    if weight_dtype not in WEIGHT_BYTES:
        hint = "; 4-bit weights are method='qlora'" if weight_dtype in ("nf4", "int4") else ""
        raise ValueError(f"weight_dtype={weight_dtype!r}: choose one of {sorted(WEIGHT_BYTES)}{hint}")
    if activation_dtype is not None and activation_dtype not in WEIGHT_BYTES:
        raise ValueError(f"activation_dtype={activation_dtype!r}: choose one of {sorted(WEIGHT_BYTES)}")
    for name, v in (("seq_len", seq_len), ("batch", batch)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name}={v!r}: must be a whole number of at least 1")
    arch = resolve_arch(model)
    bare = isinstance(model, (int, float)) and not isinstance(model, bool)
    n = int(model) if bare else total_parameter_count(arch)
    wb = WEIGHT_BYTES[weight_dtype]
    if method == "full":
        trainable = n if trainable_params is None else trainable_params
        ab = None
        grad_bytes = wb
        weights = n * wb
    else:
        trainable = (lora_parameter_count(arch, r, target_modules, dora=method == "dora")
                     if trainable_params is None else trainable_params)
        ab = ADAPTER_BYTES[method] if adapter_bytes is None else adapter_bytes
        grad_bytes = ab
        if method == "qlora":
            quantized = min(n, round(block_linear_parameter_count(arch) * (n / total_parameter_count(arch)
                                                                          if bare else 1)))
            rest_bytes = 4.0 if upcast_unquantized else wb
            weights = quantized * NF4_BYTES + (n - quantized) * rest_bytes + trainable * ab
        else:
            weights = n * wb + trainable * ab
    if master_weights is None:
        master_weights = method == "full" and wb < 4
    state = OPTIMIZERS[optimizer] + (4 if master_weights else 0)
    act_dtype = activation_dtype or weight_dtype
    acts = activation_bytes(arch, seq_len, batch, WEIGHT_BYTES[act_dtype],
                            gradient_checkpointing, flash_attention)
    inputs = dict(model=model if isinstance(model, (str, int, float)) else arch.to_dict(),
                  arch=arch.name, method=method, optimizer=optimizer, seq_len=seq_len, batch=batch,
                  r=r, target_modules=target_modules, weight_dtype=weight_dtype,
                  adapter_bytes=ab, activation_dtype=act_dtype,
                  gradient_checkpointing=gradient_checkpointing, flash_attention=flash_attention,
                  master_weights=master_weights, upcast_unquantized=upcast_unquantized,
                  overhead_gb=overhead_gb)
    return Breakdown(weights=weights, gradients=trainable * grad_bytes, optimizer=trainable * state,
                     activations=acts, overhead=overhead_gb * GIB, total_params=n,
                     trainable_params=trainable, inputs=inputs, arch=arch, shape_note=shape_note(model, arch))


# --- the widget -------------------------------------------------------------------------------

PART_COLORS = {"weights": "#7f7f7f", "gradients": "#d62728", "optimizer": "#ff7f0e",
               "activations": "#1f77b4", "overhead": "#c7c7c7"}
# Each GPU's memory in GiB as its driver reports the total (nvidia-smi's MiB / 1024): short name ->
# (name shown, MiB). The makers sell these as 16, 24, 48, 40, 80, 80 and 141 "GB"; a T4 sold as
# 16 GB reports 15360 MiB, 15 GiB. The calculator, its labels and its verdicts all use GiB.
GPU_MIB = {"T4": ("T4", 15360), "RTX 4090": ("RTX 4090", 24564), "A6000": ("A6000", 49140),
           "A100-40": ("A100", 40960), "A100-80": ("A100", 81920), "H100": ("H100", 81559),
           "H200": ("H200", 143771)}


def gpu_label(name: str) -> str:
    """The ``GPUS`` key of a GPU by its short name (a key of ``GPU_MIB``: "T4", "A100-80", ...)."""
    if name not in GPU_MIB:
        raise ValueError(f"gpu={name!r}: choose one of {list(GPU_MIB)} or a key of GPUS")
    shown, mib = GPU_MIB[name]
    return f"{shown} ({mib / 1024:.1f}".removesuffix(".0") + " GiB)"


GPUS = {gpu_label(name): mib / 1024 for name, (_, mib) in GPU_MIB.items()}


def fits(breakdown: Breakdown, gpu_gb: float) -> bool:
    """Does the estimate fit in ``gpu_gb`` GiB of GPU memory?"""
    if gpu_gb <= 0:
        raise ValueError(f"gpu_gb={gpu_gb!r}: must be > 0")
    return breakdown.total_gb <= gpu_gb


def calculator_widget(model: str = "llama-2-7b", method: str = "qlora", optimizer: str = "adamw",
                      seq_len: int = 512, batch: int = 1, gpu: str = "RTX 4090",
                      master_weights: bool = True):
    """Controls for model, method, optimizer, sequence length, batch, GPU (a short name such as
    "T4" or a ``GPUS`` key) and fp32 master weights (on: full fine-tuning costs 16 bytes per
    parameter with AdamW, as mixed precision allocates; off: 12, the QLoRA paper's accounting);
    a stacked bar of what takes the memory for full, LoRA and QLoRA, with the chosen method's
    verdict. Returns an object with ``.controls`` (dict), ``.figure``, ``.breakdown``,
    ``.verdict`` and ``.widget``."""
    import ipywidgets as W

    class CalculatorWidget:
        pass

    self = CalculatorWidget()
    self.controls = {
        "model": W.Dropdown(options=list(ARCHITECTURES), value=architecture_name(model) or model,
                            description="model"),
        "method": W.ToggleButtons(options=list(METHODS[:3]), value=method, description="method"),
        "optimizer": W.Dropdown(options=list(OPTIMIZERS), value=optimizer, description="optimizer"),
        "seq_len": W.SelectionSlider(options=[128, 256, 512, 1024, 2048, 4096], value=seq_len,
                                     description="seq len"),
        "batch": W.SelectionSlider(options=[1, 2, 4, 8, 16, 32], value=batch, description="batch"),
        "gradient_checkpointing": W.Checkbox(value=False, description="gradient checkpointing"),
        "master_weights": W.Checkbox(value=master_weights,
                                     description="full: fp32 master weights (16 bytes/param; off: 12)"),
        "gpu": W.Dropdown(options=list(GPUS), value=gpu if gpu in GPUS else gpu_label(gpu), description="GPU"),
    }
    self.figure = lab_layout(LabFigure(), 420, top=70, legend_below=-0.2, barmode="stack", xaxis_title="method",
                             yaxis_title="memory (GiB)")
    for part in PARTS:
        self.figure.add_bar(x=list(METHODS[:3]), y=[0, 0, 0], name=part, marker_color=PART_COLORS[part])
    self.figure.add_scatter(x=list(METHODS[:3]), y=[0, 0, 0], mode="lines", name="GPU memory (GiB)",
                            line=dict(color="black", dash="dash"))
    self.verdict = W.HTML()

    def update(*_):
        c = {k: w.value for k, w in self.controls.items()}
        gpu_gb = GPUS[c["gpu"]]
        kw = dict(optimizer=c["optimizer"], seq_len=c["seq_len"], batch=c["batch"],
                  gradient_checkpointing=c["gradient_checkpointing"])
        per_method = {m: estimate(c["model"], method=m, **kw,
                                  **({"master_weights": c["master_weights"]} if m == "full" else {}))
                      for m in METHODS[:3]}
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
        self.verdict.value = (f"<b>{c['method']}: {b.total_gb:.1f} GiB of {gpu_gb:.1f} GiB — "
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
                         self.controls["master_weights"],
                         self.verdict, self.figure])
    return self
