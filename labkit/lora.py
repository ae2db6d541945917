"""LoRA and DoRA from scratch, and how many parameters they train.

    layer = LoRALinear(nn.Linear(576, 576), r=8, alpha=16)   # y = W x + (alpha/r) B A x
    wrap_linears(model, ["q_proj", "v_proj"], r=8)            # put it into a real model
    lora_parameter_count(ARCHITECTURES["llama-2-7b"], r=8)    # trainable parameters, from the shape

LoRA (Hu et al., 2021, arXiv:2106.09685) freezes a weight W (out x in) and learns a low-rank
update B A, with A (r x in) and B (out x r). B starts at zero, so training starts exactly at the
base model. DoRA (Liu et al., 2024, arXiv:2402.09353) splits the weight into a magnitude m and a
direction V/||V|| and trains the magnitude directly and the direction through LoRA.

PEFT (``peft.LoraConfig``) is what the lab trains with; this module is the readable version,
tested to give PEFT's output on the same weights.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from .plots import LabFigure, Panel, lab_layout

# --- LoRA from scratch --------------------------------------------------------------------------


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update: y = W x + (alpha/r) B A x."""

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16):
        super().__init__()
        if not isinstance(r, int) or r < 1:
            raise ValueError(f"r={r!r}: the rank must be a whole number of at least 1")
        if alpha <= 0:
            raise ValueError(f"alpha={alpha!r}: must be > 0")
        self.base, self.r, self.alpha = base, r, alpha
        self.scaling = alpha / r
        base.requires_grad_(False)
        device, dtype = base.weight.device, base.weight.dtype  # A and B live where W does
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=device, dtype=dtype))
        # A as nn.Linear initialises its weight (and as PEFT does); B = 0 so that B A = 0 at the start.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x):
        return self.base(x) + (x @ self.lora_A.T @ self.lora_B.T) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """The update this adapter adds to W: (alpha/r) B A, shape (out, in)."""
        return self.scaling * self.lora_B @ self.lora_A


def wrap_linears(model: nn.Module, target_modules, r: int = 8, alpha: float = 16) -> list[str]:
    """Replace every ``nn.Linear`` whose name ends with one of ``target_modules`` by a
    :class:`LoRALinear`; freeze everything else. Returns the names wrapped."""
    targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    chosen = [name for name, m in model.named_modules()
              if isinstance(m, nn.Linear) and any(name.split(".")[-1] == t for t in targets)]
    if not chosen:
        raise ValueError(f"target_modules={targets!r} matched no nn.Linear layer in the model")
    for p in model.parameters():
        p.requires_grad_(False)
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), r=r, alpha=alpha))
    return chosen


# --- architectures and parameter counts ---------------------------------------------------------

@dataclass(frozen=True)
class ArchShape:
    """The shape of a Llama-style decoder: all a parameter count (and the memory calculator) needs."""
    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied_embeddings: bool = False
    head_dim: int | None = None     # None: hidden // heads
    mlp: str = "gated"              # "gated" (Llama's SwiGLU: gate, up, down) or "plain" (GPT's GeLU: up, down)
    qkv_bias: bool = False          # biases on q, k, v (Qwen2); Llama and Mistral have none

    def __post_init__(self):
        if self.mlp not in ("gated", "plain"):
            raise ValueError(f"mlp={self.mlp!r}: choose 'gated' (gate, up, down) or 'plain' (up, down)")

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden // self.heads

    def to_dict(self) -> dict:
        return asdict(self)


# Published shapes, from each model's config.json on the Hugging Face hub: HuggingFaceTB/SmolLM2-135M
# and SmolLM2-360M, Qwen/Qwen2.5-0.5B (the lab's registry models; their -Instruct versions share the
# shape), meta-llama/Llama-3.2-1B and -3B, Llama-2-7b-hf, -13b-hf, -70b-hf, Meta-Llama-3-8B and -70B,
# mistralai/Mistral-7B-v0.1, codellama/CodeLlama-34b-hf, huggyllama/llama-65b; and, for GPT-3,
# Table 2.1 of Brown et al. 2020 (arXiv:2005.14165). Totals are computed from them.
ARCHITECTURES = {a.name: a for a in [
    ArchShape("smollm2-135m", hidden=576, intermediate=1536, layers=30, heads=9, kv_heads=3,
              vocab=49152, tied_embeddings=True),
    ArchShape("smollm2-360m", hidden=960, intermediate=2560, layers=32, heads=15, kv_heads=5,
              vocab=49152, tied_embeddings=True),
    ArchShape("qwen2.5-0.5b", hidden=896, intermediate=4864, layers=24, heads=14, kv_heads=2,
              vocab=151936, tied_embeddings=True, qkv_bias=True),
    ArchShape("llama-3.2-1b", hidden=2048, intermediate=8192, layers=16, heads=32, kv_heads=8,
              vocab=128256, tied_embeddings=True),
    ArchShape("llama-3.2-3b", hidden=3072, intermediate=8192, layers=28, heads=24, kv_heads=8,
              vocab=128256, tied_embeddings=True),
    ArchShape("llama-2-7b", hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=32, vocab=32000),
    ArchShape("mistral-7b", hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, vocab=32000),
    ArchShape("llama-3-8b", hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, vocab=128256),
    ArchShape("llama-2-13b", hidden=5120, intermediate=13824, layers=40, heads=40, kv_heads=40, vocab=32000),
    ArchShape("codellama-34b", hidden=8192, intermediate=22016, layers=48, heads=64, kv_heads=8, vocab=32000),
    ArchShape("llama-65b", hidden=8192, intermediate=22016, layers=80, heads=64, kv_heads=64, vocab=32000),
    ArchShape("llama-2-70b", hidden=8192, intermediate=28672, layers=80, heads=64, kv_heads=8, vocab=32000),
    ArchShape("llama-3-70b", hidden=8192, intermediate=28672, layers=80, heads=64, kv_heads=8, vocab=128256),
    ArchShape("gpt-3-175b", hidden=12288, intermediate=4 * 12288, layers=96, heads=96, kv_heads=96,
              vocab=50257, tied_embeddings=True, mlp="plain"),
]}

# Which linear layers each LoRA placement adapts ("qv" is the LoRA paper's choice; "all-linear"
# is PEFT's, and QLoRA's: every linear layer of the blocks, not the output head).
TARGETS = {
    "qv": ("q_proj", "v_proj"),
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
    "all-linear": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}


def linear_shapes(arch: ArchShape) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each linear layer in one block."""
    h, kv = arch.hidden, arch.kv_heads * arch.head_size
    shapes = {"q_proj": (h, arch.heads * arch.head_size), "k_proj": (h, kv), "v_proj": (h, kv),
              "o_proj": (arch.heads * arch.head_size, h),
              "up_proj": (h, arch.intermediate), "down_proj": (arch.intermediate, h)}
    if arch.mlp == "gated":
        shapes["gate_proj"] = (h, arch.intermediate)
    return shapes


def block_linear_parameter_count(arch: ArchShape) -> int:
    """The weights of every block's linear layers (no biases): what bitsandbytes quantises when a
    model is loaded in 4 or 8 bits (embeddings, the output head and the norms stay unquantised)."""
    return arch.layers * sum(i * o for i, o in linear_shapes(arch).values())


def total_parameter_count(arch: ArchShape) -> int:
    """All parameters: embeddings (+ output head unless tied), per block the linear layers, the
    q/k/v biases where the model has them, and two norms, then the final norm (Llama has no
    biases; GPT-3's few biases are left out)."""
    kv = arch.kv_heads * arch.head_size
    biases = (arch.heads * arch.head_size + 2 * kv) if arch.qkv_bias else 0
    embeddings = arch.vocab * arch.hidden * (1 if arch.tied_embeddings else 2)
    return embeddings + block_linear_parameter_count(arch) + arch.layers * (biases + 2 * arch.hidden) + arch.hidden


def _targets(target_modules) -> tuple[str, ...]:
    if isinstance(target_modules, str):
        if target_modules not in TARGETS:
            raise ValueError(f"target_modules={target_modules!r}: choose one of {sorted(TARGETS)} "
                             "or pass a list of layer names")
        return TARGETS[target_modules]
    return tuple(target_modules)


def lora_parameter_count(arch: ArchShape, r: int = 8, target_modules="all-linear",
                         dora: bool = False) -> int:
    """Trainable parameters of LoRA: each adapted (in -> out) layer adds r*(in + out);
    DoRA adds a magnitude vector of ``out`` per layer."""
    if not isinstance(r, int) or r < 1:
        raise ValueError(f"r={r!r}: the rank must be a whole number of at least 1")
    shapes = linear_shapes(arch)
    total = 0
    for name in _targets(target_modules):
        if name not in shapes:
            continue  # e.g. gate_proj on a GPT-style MLP
        i, o = shapes[name]
        total += r * (i + o) + (o if dora else 0)
    return arch.layers * total


def lora_table(r: int = 8, target_modules="all-linear", archs=None):
    """One row per architecture: total parameters, LoRA's trainable parameters and their share."""
    import pandas as pd

    rows = []
    for arch in archs or ARCHITECTURES.values():
        total = total_parameter_count(arch)
        lora = lora_parameter_count(arch, r, target_modules)
        rows.append({"model": arch.name, "total_parameters": total, "lora_parameters": lora,
                     "percent_trained": 100 * lora / total})
    return pd.DataFrame(rows)


def arch_from_config(config, name: str = "model") -> ArchShape:
    """The :class:`ArchShape` of a transformers Llama-style config (Llama, Mistral, Qwen2: a gated
    MLP; Qwen2 adds biases to q, k and v)."""
    return ArchShape(name, hidden=config.hidden_size, intermediate=config.intermediate_size,
                     layers=config.num_hidden_layers, heads=config.num_attention_heads,
                     kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
                     vocab=config.vocab_size, tied_embeddings=bool(config.tie_word_embeddings),
                     head_dim=getattr(config, "head_dim", None),
                     qkv_bias=getattr(config, "model_type", "") == "qwen2")


def rank_widget(arch: ArchShape | None = None, r: int = 8, alpha: int = 16, target_modules="all-linear"):
    """Rank, alpha and placement controls with a live count of trainable parameters for the lab
    model and the published architectures. Returns an object with ``.controls``, ``.figure``,
    ``.table`` (a DataFrame of the current numbers) and ``.widget`` (to display)."""
    import ipywidgets as W

    archs = list(ARCHITECTURES.values()) if arch is None else [arch, *[
        a for a in ARCHITECTURES.values() if a.name != arch.name]]

    class RankWidget:
        pass

    self = RankWidget()
    self.controls = {
        "r": W.SelectionSlider(options=[1, 2, 4, 8, 16, 32, 64, 128, 256], value=r, description="rank r"),
        "alpha": W.IntSlider(value=alpha, min=1, max=512, description="alpha"),
        "targets": W.Dropdown(options=list(TARGETS), value=target_modules, description="adapt"),
    }
    self.figure = lab_layout(LabFigure(), 380, xaxis_title="model",
                             yaxis_title="trainable parameters (% of the model, log scale)", yaxis_type="log")
    self.figure.add_bar(x=[a.name for a in archs], y=[1] * len(archs), marker_color="#1f77b4",
                        text=[""] * len(archs), textposition="outside")
    self.figure.add_scatter(x=[a.name for a in archs], y=[0.1] * len(archs), mode="lines",
                            name="the lesson's 0.1%", line=dict(color="black", dash="dash"))
    self.label = W.HTML()

    def update(*_):
        t = lora_table(self.controls["r"].value, self.controls["targets"].value, archs)
        self.table = t
        with self.figure.batch_update():
            self.figure.data[0].y = list(t["percent_trained"])
            self.figure.data[0].text = [f"{n / 1e6:.2f}M" for n in t["lora_parameters"]]
            below = int((t["percent_trained"] < 0.1).sum())
            self.figure.layout.title = (f"r={self.controls['r'].value}, {self.controls['targets'].value}: "
                                        f"{below} of {len(t)} models train less than 0.1%")
        scale = self.controls["alpha"].value / self.controls["r"].value
        self.label.value = (f"scaling alpha/r = {scale:.3g}: the update B A is multiplied by this "
                            "(it changes the effective learning rate, not the parameter count)")

    for c in self.controls.values():
        c.observe(update, names="value")
    update()
    self.widget = Panel([W.HBox(list(self.controls.values())), self.label, self.figure])
    return self


# --- DoRA: magnitude and direction --------------------------------------------------------------

def magnitude_direction(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split W (out x in) into m = ||W|| per output row and V/||V|| (what PEFT's DoRA calls the
    column-wise norm: the paper writes W as in x out, so its columns are PEFT's rows).
    ``m[:, None] * direction`` gives W back."""
    w = weight.detach().float()
    m = torch.linalg.norm(w, dim=1)
    return m, w / m[:, None]


def dora_weight(weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor,
                magnitude: torch.Tensor, scaling: float) -> torch.Tensor:
    """DoRA's merged weight: m * (W + s B A) / ||W + s B A|| (norm per output row, as PEFT)."""
    v = weight + scaling * lora_B @ lora_A
    return magnitude[:, None] * v / torch.linalg.norm(v, dim=1, keepdim=True)


def magnitude_direction_change(w0: torch.Tensor, wt: torch.Tensor) -> tuple[float, float]:
    """The DoRA paper's ΔM and ΔD (its eq. 4-5) between a weight before (w0) and after (wt):
    ΔM = mean over rows |m_t - m_0|, ΔD = mean over rows (1 - cos(W_t row, W_0 row))."""
    w0, wt = w0.detach().float(), wt.detach().float()
    if w0.shape != wt.shape:
        raise ValueError(f"weights differ in shape: {tuple(w0.shape)} vs {tuple(wt.shape)}")
    dm = (torch.linalg.norm(wt, dim=1) - torch.linalg.norm(w0, dim=1)).abs().mean()
    dd = (1 - torch.nn.functional.cosine_similarity(wt, w0, dim=1)).mean()
    return float(dm), float(dd)


def effective_weight(module) -> torch.Tensor:
    """The weight a (possibly PEFT-wrapped) linear layer applies now: W, W + s B A for LoRA,
    m * (W + s B A)/||W + s B A|| for DoRA."""
    base = getattr(module, "base_layer", module)
    w = base.weight.detach().float()
    if not hasattr(module, "lora_A") or not module.active_adapters:
        return w
    name = module.active_adapters[0]
    if name not in module.lora_A:
        return w
    a = module.lora_A[name].weight.detach().float()
    b = module.lora_B[name].weight.detach().float()
    s = module.scaling[name]
    dora = getattr(module, "lora_magnitude_vector", None)
    if dora is not None and name in dora:
        return dora_weight(w, a, b, dora[name].weight.detach().float(), s)
    return w + s * b @ a


def snapshot_weights(model, layer_name: str = "q_proj") -> dict[str, torch.Tensor]:
    """Effective weights of every layer whose name ends with ``layer_name`` (a copy)."""
    out = {}
    for name, m in model.named_modules():
        if name.split(".")[-1] == layer_name and (isinstance(m, nn.Linear) or hasattr(m, "base_layer")):
            key = name.replace("base_model.model.", "")
            out[key] = effective_weight(m).clone()
    if not out:
        raise ValueError(f"layer_name={layer_name!r} matched no linear layer")
    return out


class WeightSnapshots:
    """A ``transformers.TrainerCallback`` that keeps the effective weights of one kind of layer
    at the start and measures ΔM and ΔD against them every ``every`` steps (the DoRA paper's
    magnitude/direction analysis). ``.rows``: one dict per (step, layer)."""

    def __new__(cls, layer_name: str = "q_proj", every: int = 1, method: str = ""):
        from transformers import TrainerCallback

        class _Snapshots(TrainerCallback):
            def __init__(self):
                self.layer_name, self.every, self.method = layer_name, every, method
                self.start, self.rows = None, []

            def on_train_begin(self, args, state, control, model=None, **kw):
                self.start = snapshot_weights(model, self.layer_name)

            def on_step_end(self, args, state, control, model=None, **kw):
                step = state.global_step
                if step % self.every == 0 or step == state.max_steps:
                    for layer, w in snapshot_weights(model, self.layer_name).items():
                        dm, dd = magnitude_direction_change(self.start[layer], w)
                        self.rows.append({"method": self.method, "step": step, "layer": layer,
                                          "delta_m": dm, "delta_d": dd})

        return _Snapshots()
