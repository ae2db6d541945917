"""Look at the weights: where they sit, what they hold, and how much fine-tuning moves them.

    table = inventory(model)                  # one row per weight tensor: component, layer, module, bytes
    before = snapshot(model)                  # a copy of the weights, kept before training
    ... train ...
    change = relative_change(before, model)   # ||ΔW|| / ||W|| per matrix
    change_grid(change)                       # layer x module table, for a heatmap
    s = singular_values(delta(before, model, name)); energy_share(s)   # is ΔW low-rank?

Everything here works on any Llama-style model (SmolLM2, the toy model of ``labkit.toy``).
"""
from __future__ import annotations

import re

import torch
from transformers import TrainerCallback

from .plots import LabFigure, lab_layout

# The seven linear layers of a Llama block, in the order they run.
MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SHORT = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "gate",
         "up_proj": "up", "down_proj": "down"}

_LAYER = re.compile(r"layers\.(\d+)\.")


def describe_name(name: str) -> dict:
    """Split a parameter name into component (embedding, attention, mlp, norm, head), layer and module."""
    m = _LAYER.search(name)
    layer = int(m.group(1)) if m else None
    module = next((SHORT[k] for k in MODULES if f".{k}." in f".{name}"), None)
    if "embed" in name:
        component = "embedding"
    elif "lm_head" in name:
        component = "output head"
    elif "norm" in name:
        component = "norm"
    elif module in ("q", "k", "v", "o"):
        component = "attention"
    elif module in ("gate", "up", "down"):
        component = "mlp"
    else:
        component = "other"
    return {"component": component, "layer": layer, "module": module}


def inventory(model):
    """One row per weight tensor: name, component, layer, module, shape, parameters, dtype, bytes.

    Tied weights (SmolLM2 uses its embedding matrix again as the output head) appear once."""
    import pandas as pd

    rows = []
    for name, p in model.named_parameters():
        rows.append({"name": name, **describe_name(name), "shape": tuple(p.shape),
                     "parameters": p.numel(), "dtype": str(p.dtype).replace("torch.", ""),
                     "bytes": p.numel() * p.element_size()})
    return pd.DataFrame(rows)


def inventory_by_component(model):
    """Parameters and bytes per component, with each component's share of the total."""
    table = inventory(model)
    summary = table.groupby("component", sort=False)[["parameters", "bytes"]].sum()
    summary["share"] = summary["parameters"] / summary["parameters"].sum()
    return summary.sort_values("parameters", ascending=False)


def histogram(model, name: str, bins: int = 100):
    """``(counts, edges)`` of one weight tensor's values."""
    params = dict(model.named_parameters())
    if name not in params:
        raise ValueError(f"name={name!r} is not a parameter of this model; "
                         f"try one of {list(params)[:3]} ...")
    values = params[name].detach().float().flatten().cpu()
    counts, edges = torch.histogram(values, bins=bins)
    return counts.tolist(), edges.tolist()


def linear_weight_names(model) -> list[str]:
    """The names of the attention and MLP matrices (q, k, v, o, gate, up, down in every layer)."""
    return [n for n, p in model.named_parameters() if p.ndim == 2 and describe_name(n)["module"]]


@torch.no_grad()
def snapshot(model, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """A copy (fp32, on the CPU) of the named weights; all parameters by default."""
    params = dict(model.named_parameters())
    names = list(params) if names is None else names
    return {n: params[n].detach().float().cpu().clone() for n in names}


def _current(model) -> dict:
    # A PEFT wrapper or a trainer may rename parameters with prefixes; match on the suffix.
    return {n.removeprefix("base_model.model."): p for n, p in model.named_parameters()}


@torch.no_grad()
def delta(before: dict, model, name: str) -> torch.Tensor:
    """ΔW = W_now - W_before for one weight."""
    now = _current(model)
    if name not in before or name not in now:
        raise ValueError(f"name={name!r} is not in both the snapshot and the model")
    return now[name].detach().float().cpu() - before[name]


@torch.no_grad()
def relative_change(before: dict, model, names: list[str] | None = None):
    """Per weight: ||W||, ||ΔW|| (Frobenius norms) and the relative change ||ΔW|| / ||W||."""
    import pandas as pd

    now = _current(model)
    rows = []
    for name in names or list(before):
        if name not in now:
            raise ValueError(f"{name!r} is in the snapshot but not in the model")
        w0 = before[name]
        dw = now[name].detach().float().cpu() - w0
        norm_w, norm_dw = float(w0.norm()), float(dw.norm())
        rows.append({"name": name, **describe_name(name), "parameters": w0.numel(),
                     "norm_w": norm_w, "norm_dw": norm_dw,
                     "relative_change": norm_dw / norm_w if norm_w > 0 else float("nan")})
    return pd.DataFrame(rows)


def change_grid(change, value: str = "relative_change"):
    """A layer x module table (q, k, v, o, gate, up, down) of ``value`` from :func:`relative_change`."""
    linear = change.dropna(subset=["layer", "module"])
    if linear.empty:
        raise ValueError("no attention/MLP matrices in this table (names need 'layers.N.<module>')")
    grid = linear.pivot_table(index="layer", columns="module", values=value, aggfunc="first")
    grid.index = grid.index.astype(int)
    return grid[[SHORT[m] for m in MODULES if SHORT[m] in grid.columns]]


def singular_values(matrix: torch.Tensor) -> torch.Tensor:
    """Singular values of a 2-D matrix, largest first."""
    if matrix.ndim != 2:
        raise ValueError(f"singular_values needs a 2-D matrix, got shape {tuple(matrix.shape)}")
    return torch.linalg.svdvals(matrix.float())


def energy_share(s: torch.Tensor, ks=(1, 4, 16)) -> dict[int, float]:
    """Share of ||ΔW||² in the top-k singular directions: sum(s[:k]²) / sum(s²), for each k."""
    energy = s.double() ** 2
    total = float(energy.sum())
    if total == 0:
        return {k: float("nan") for k in ks}
    return {k: float(energy[:k].sum()) / total for k in ks}


def spectrum_table(before: dict, model, names: list[str], ks=(1, 4, 16)):
    """For each named matrix: its shape, full rank, and the energy share of ΔW in the top-k directions."""
    import pandas as pd

    rows = []
    for name in names:
        s = singular_values(delta(before, model, name))
        share = energy_share(s, ks)
        rows.append({"name": name, **describe_name(name), "shape": tuple(before[name].shape),
                     "rank": len(s), **{f"top_{k}": share[k] for k in ks}})
    return pd.DataFrame(rows)


class UpdateSizeCallback(TrainerCallback):
    """Measures one optimizer step's update, ||ΔW_step|| / ||W|| per matrix, for the step numbered
    ``step`` (1 = the first). Pass it to ``labkit.train(..., callbacks=[cb])``; afterwards
    ``cb.table`` is :func:`relative_change` for that single step."""

    def __init__(self, step: int = 1, names: list[str] | None = None):
        if not isinstance(step, int) or step < 1:
            raise ValueError(f"step={step!r}: must be a whole number of at least 1")
        self.step, self.names, self.table, self._before = step, names, None, None

    def on_step_begin(self, args, state, control, model=None, **kw):
        if state.global_step + 1 == self.step:
            self._before = snapshot(model, self.names or linear_weight_names(model))

    def on_step_end(self, args, state, control, model=None, **kw):
        if self._before is not None and state.global_step == self.step:
            self.table = relative_change(self._before, model)
            self._before = None


# --- figures ------------------------------------------------------------------------------------

def histogram_figure(model, name: str, bins: int = 100, title: str | None = None):
    import plotly.graph_objects as go

    counts, edges = histogram(model, name, bins)
    centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    fig = LabFigure(go.Bar(x=centers, y=counts, marker_color="#7f7f7f"))
    return lab_layout(fig, 340, title=title or f"Values of {name}", xaxis_title="weight value",
                      yaxis_title="number of weights", bargap=0)


def change_heatmap(grid, title: str = "Relative change ||ΔW|| / ||W|| per layer and module"):
    import plotly.graph_objects as go

    fig = LabFigure(go.Heatmap(z=grid.values, x=list(grid.columns), y=list(grid.index),
                               colorscale="Reds", colorbar=dict(title="||ΔW||/||W||")))
    return lab_layout(fig, 520, title=title, xaxis_title="module (attention: q k v o; MLP: gate up down)",
                      yaxis_title="layer")


def spectrum_figure(before: dict, model, names: list[str], top: int = 64,
                    title: str = "Singular values of ΔW (normalised to the largest)"):

    fig = LabFigure()
    for name in names:
        s = singular_values(delta(before, model, name))
        s = (s / s[0]).tolist() if float(s[0]) > 0 else s.tolist()
        fig.add_scatter(x=list(range(1, min(top, len(s)) + 1)), y=s[:top], mode="lines+markers",
                        name=name.removeprefix("model."))
    return lab_layout(fig, 380, legend_below=-0.25, title=title, xaxis_title="direction (singular value index)",
                      yaxis_title="singular value / largest", yaxis_type="log")
