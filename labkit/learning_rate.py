"""The learning rate: how big a step the optimizer takes, and what happens when it is wrong.

- ``descent_path`` / ``SurfaceExplorer`` / ``regimes_animation``: gradient descent on a two-parameter
  loss surface (numpy, instant): too small crawls, right converges, too big oscillates or diverges.
- ``lr_sweep``: the same question on the real model, one fresh model per learning rate, every loss
  curve drawn into one figure as it trains; divergence is detected and named in the legend. With
  ``heldout`` texts each run is also scored on the same unseen texts before and after, the fair
  comparison (a training batch's loss moves with which texts the batch drew), drawn by
  ``heldout_figure``.
- ``schedule_curves`` / ``ScheduleExplorer``: warmup and decay, read from the very scheduler objects
  (``transformers.get_scheduler``) that the Trainer uses.
- ``UpdateSizeCallback``: the measured relative size of each step's change, |ΔW| / |W|, per weight.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from transformers import TrainerCallback
from .plots import LabFigure, Panel, lab_layout
from .training import SCHEDULES

# --- 1. a two-parameter loss surface --------------------------------------------------------------

SURFACE_CURVATURE = (1.0, 10.0)   # a long, narrow valley: gentle along w1, steep along w2
SURFACE_START = (-4.0, 1.5)
REGIME_COLORS = {"crawling": "#7f7f7f", "converging": "#2ca02c", "oscillating": "#ff7f0e",
                 "diverging": "#d62728"}


def surface_loss(w1, w2, curvature=SURFACE_CURVATURE):
    """L(w1, w2) = (a·w1² + b·w2²) / 2: works on numbers and numpy arrays."""
    a, b = curvature
    return 0.5 * (a * np.asarray(w1) ** 2 + b * np.asarray(w2) ** 2)


def surface_gradient(w, curvature=SURFACE_CURVATURE) -> np.ndarray:
    return np.asarray(curvature) * np.asarray(w, dtype=float)


def descent_path(learning_rate: float, steps: int = 30, start=SURFACE_START,
                 curvature=SURFACE_CURVATURE, bound: float = 1e3) -> np.ndarray:
    """Points visited by plain gradient descent, w ← w − lr·∇L(w): shape (steps+1, 2).
    A path that leaves ``|w| < bound`` stops there (it has diverged)."""
    if not learning_rate > 0:
        raise ValueError(f"learning_rate={learning_rate!r}: must be > 0")
    if steps < 1:
        raise ValueError(f"steps={steps!r}: must be at least 1")
    w = np.array(start, dtype=float)
    path = [w.copy()]
    for _ in range(steps):
        w = w - learning_rate * surface_gradient(w, curvature)
        path.append(w.copy())
        if not np.all(np.abs(w) < bound):
            break
    return np.array(path)


def classify_path(path: np.ndarray, curvature=SURFACE_CURVATURE, tol: float = 0.05) -> str:
    """'diverging' (loss ends above where it started), 'oscillating' (zig-zags across the valley),
    'converging' (reaches the bottom, loss below ``tol`` of its start) or 'crawling' (not there yet)."""
    losses = surface_loss(path[:, 0], path[:, 1], curvature)
    if not np.isfinite(losses[-1]) or losses[-1] > losses[0]:
        return "diverging"
    signs = np.sign(path[:, 1])
    flips = int(np.sum(signs[1:] * signs[:-1] < 0))
    if flips >= len(path) // 2:
        return "oscillating"
    return "converging" if losses[-1] < tol * losses[0] else "crawling"


def _contour(curvature=SURFACE_CURVATURE, extent=(5.0, 2.5)):
    import plotly.graph_objects as go

    x = np.linspace(-extent[0], extent[0], 81)
    y = np.linspace(-extent[1], extent[1], 61)
    z = surface_loss(x[None, :], y[:, None], curvature)
    return go.Contour(x=x, y=y, z=np.log10(z + 1e-3), showscale=False, colorscale="Blues",
                      reversescale=True, contours=dict(coloring="heatmap"), hoverinfo="skip",
                      name="log10 loss")


def _surface_layout(fig, title, extent=(5.0, 2.5)):
    return lab_layout(fig, 420, legend_below=-0.2, title=title, xaxis_title="weight w1 (gentle direction)",
                      yaxis_title="weight w2 (steep direction)",
                      xaxis=dict(range=[-extent[0], extent[0]]), yaxis=dict(range=[-extent[1], extent[1]]))


class SurfaceExplorer:
    """A log slider for the learning rate and a slider for the step shown (with a Play button):
    the path is recomputed on every change (microseconds). ``.controls``, ``.figure``, ``.regime``."""

    def __init__(self, learning_rate: float = 0.05, steps: int = 30):
        import ipywidgets as W

        self.steps = steps
        self.lr = W.FloatLogSlider(value=learning_rate, base=10, min=-3, max=-0.5, step=0.05,
                                   description="learning rate", readout_format=".3f",
                                   continuous_update=True, style={"description_width": "initial"})
        self.step = W.IntSlider(value=steps, min=0, max=steps, description="step")
        self.play = W.Play(value=steps, min=0, max=steps, interval=150, description="play")
        W.jslink((self.play, "value"), (self.step, "value"))
        self.figure = LabFigure(data=[_contour()])
        self.figure.add_scatter(x=[], y=[], mode="lines+markers", name="path", line=dict(width=2))
        self.figure.add_scatter(x=[0], y=[0], mode="markers", name="minimum",
                                marker=dict(symbol="star", size=14, color="black"))
        self.lr.observe(self._update, "value")
        self.step.observe(self._update, "value")
        self.controls = W.HBox([self.lr, self.play, self.step])
        self.regime = ""
        self._update()

    def _update(self, *_):
        path = descent_path(self.lr.value, self.steps)
        self.regime = classify_path(path)
        shown = path[: self.step.value + 1]
        w = shown[-1]
        with self.figure.batch_update():
            trace = self.figure.data[1]
            trace.x, trace.y = shown[:, 0].tolist(), shown[:, 1].tolist()
            trace.line.color = trace.marker.color = REGIME_COLORS[self.regime]
            _surface_layout(self.figure, f"learning rate {self.lr.value:.3f}: {self.regime} "
                            f"(step {len(shown) - 1}, loss {float(surface_loss(*w)):.3g})")

    def widget(self):
        return Panel([self.controls, self.figure])


def regimes_animation(learning_rates=(0.005, 0.05, 0.17, 0.21), steps: int = 30):
    """A plotly animation (frames, Play button, step slider) of several learning rates descending
    the same surface together; works without widgets (e.g. in a static HTML export)."""
    import plotly.graph_objects as go

    paths = {lr: descent_path(lr, steps) for lr in learning_rates}
    names = {lr: f"lr={lr:g}: {classify_path(p)}" for lr, p in paths.items()}

    def traces(k):
        return [go.Scatter(x=p[:k + 1, 0], y=p[:k + 1, 1], mode="lines+markers", name=names[lr],
                           line=dict(color=REGIME_COLORS[classify_path(p)])) for lr, p in paths.items()]

    fig = LabFigure(data=[_contour(), *traces(0)],
                    frames=[go.Frame(data=traces(k), traces=list(range(1, len(paths) + 1)), name=str(k))
                            for k in range(steps + 1)])
    fig.update_layout(
        updatemenus=[dict(type="buttons", x=0, y=1.12, xanchor="left", buttons=[
            dict(label="▶ play", method="animate",
                 args=[None, dict(frame=dict(duration=150, redraw=False), fromcurrent=True)])])],
        sliders=[dict(currentvalue=dict(prefix="step "), steps=[
            dict(label=str(k), method="animate",
                 args=[[str(k)], dict(mode="immediate", frame=dict(duration=0, redraw=False))])
            for k in range(steps + 1)])])
    return _surface_layout(fig, "Same surface, four learning rates: too small crawls, too big diverges")


# --- 2. a learning-rate sweep on the real model ---------------------------------------------------

def detect_divergence(losses, factor: float = 1.5) -> int | None:
    """The first step (1-based) whose loss is non-finite or above ``factor`` × the first loss;
    None if the run never diverged."""
    if factor <= 1:
        raise ValueError(f"factor={factor!r}: must be > 1")
    losses = list(losses)
    if not losses:
        return None
    first = losses[0]
    for i, loss in enumerate(losses, start=1):
        if not math.isfinite(loss) or loss > factor * first:
            return i
    return None


class StopWhenDiverged(TrainerCallback):
    """Stop a run a couple of steps after its loss diverged (no point paying for more)."""

    def __init__(self, factor: float = 1.5, patience: int = 2):
        self.factor, self.patience, self.losses = factor, patience, []

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))
            at = detect_divergence(self.losses, self.factor)
            if at is not None and len(self.losses) - at >= self.patience:
                control.should_training_stop = True


class SweepPlot:
    """One chart; ``new_run(label)`` adds a line and returns the callable that
    ``labkit.train(plot=...)`` feeds with each step's row, which redraws the chart."""

    def __init__(self, title: str = "Loss per step, one line per learning rate"):
        self.figure = lab_layout(LabFigure(), 380, title=title, xaxis_title="optimizer step",
                                 yaxis_title="training loss (cross-entropy, nats/token)")

    def new_run(self, label: str, color: str | None = None):
        self.figure.add_scatter(x=[], y=[], mode="lines+markers", name=label, line=dict(color=color))
        trace = self.figure.data[-1]

        def on_row(row, ev):
            if row is not None and math.isfinite(row["loss"]):
                with self.figure.batch_update():
                    trace.x = tuple(trace.x) + (row["step"],)
                    trace.y = tuple(trace.y) + (row["loss"],)
        on_row.trace = trace
        return on_row


def rate_color(i: int, n: int) -> str:
    """Colours from cool (small rates) to hot (large rates)."""
    import plotly.colors

    return plotly.colors.sample_colorscale("Plasma", [0.85 * i / max(1, n - 1)])[0]


def heldout_losses(model, tok, texts: list[str], max_length: int) -> list[float]:
    """Mean next-token loss (nats/token) of each text: the same unseen texts for every run. A
    non-finite loss (a broken model) is kept as ``inf``."""
    from .predictions import perplexity

    out = []
    with torch.no_grad():
        for text in texts:
            try:
                out.append(math.log(perplexity(model, tok, [text], max_length=max_length)))
            except (OverflowError, ValueError):
                out.append(float("inf"))
    return [x if math.isfinite(x) else float("inf") for x in out]


def lr_sweep(load, train_data, learning_rates, plot: SweepPlot | None = None, factor: float = 1.5,
             stop_early: bool = True, measure_updates: bool = False, heldout: list[str] | None = None,
             **train_kwargs) -> list[dict]:
    """Fine-tune a fresh model (``load()`` -> (model, tok)) at each learning rate with
    ``labkit.train(**train_kwargs)``; return one row per rate (losses, divergence step, config,
    and with ``measure_updates`` the per-step relative update of every weight). The legend of
    ``plot`` names each run's fate. With ``heldout`` (texts the runs never train on), each row
    also has ``heldout_before`` / ``heldout_after``: every text's loss before training (the same
    fresh model for every rate, measured once) and after."""
    from .training import train

    max_length = train_kwargs.get("max_length") or 256
    before = None

    learning_rates = sorted(learning_rates)
    if not learning_rates or any(not (lr > 0) for lr in learning_rates):
        raise ValueError(f"learning_rates={learning_rates!r}: need positive numbers")
    rows = []
    for i, lr in enumerate(learning_rates):
        model, tok = load()
        if heldout and before is None:
            before = heldout_losses(model, tok, heldout, max_length)
        on_row = plot.new_run(f"lr={lr:.0e}", rate_color(i, len(learning_rates))) if plot else None
        callbacks = [StopWhenDiverged(factor)] if stop_early else []
        updates = UpdateSizeCallback() if measure_updates else None
        if updates:
            callbacks.append(updates)
        result = train(model, tok, train_data, learning_rate=lr, plot=on_row, live=False,
                       label=f"lr={lr:.0e}", callbacks=callbacks, **train_kwargs)
        losses = result.history.losses
        if result.history.stopped.startswith("loss became"):
            losses = losses + [float("nan")]
        diverged = detect_divergence(losses, factor)
        after = heldout_losses(result.model, tok, heldout, max_length) if heldout else None
        fate = (f"diverged at step {diverged}" if diverged else
                f"loss {losses[0]:.2f} → {losses[-1]:.2f}"
                + (f", held-out {mean_change(after, before):+.3f}" if heldout else ""))
        if on_row is not None:
            with plot.figure.batch_update():
                on_row.trace.name = f"lr={lr:.0e}: {fate}"
                if diverged:
                    on_row.trace.line.dash = "dot"
        rows.append({"learning_rate": lr, "first_loss": losses[0], "last_loss": losses[-1],
                     "best_loss": min((x for x in losses if math.isfinite(x)), default=float("nan")),
                     "diverged_at": diverged, "fate": fate, "steps_run": len(result.history.rows),
                     "losses": losses, "config": result.config.to_dict(),
                     "updates": updates.rows if updates else None})
        if heldout:
            rows[-1].update(heldout_before=before, heldout_after=after,
                            heldout_change=mean_change(after, before))
        del model, result
    if plot is not None:
        diverged = sum(1 for r in rows if r["diverged_at"])
        calm = [r for r in rows if r["diverged_at"] is None and math.isfinite(r["last_loss"])]
        best = f", lowest final loss at lr={min(calm, key=lambda r: r['last_loss'])['learning_rate']:.0e}" if calm else ""
        with plot.figure.batch_update():
            plot.figure.layout.title = f"Sweep over {len(rows)} learning rates: {diverged} diverged{best}"
    return rows


def mean_change(after, before) -> float:
    """Mean per-text change of the loss (negative: it fell); ``inf`` if any text broke."""
    diffs = [a - b for a, b in zip(after, before, strict=True)]
    return sum(diffs) / len(diffs) if all(math.isfinite(d) for d in diffs) else float("inf")


def best_rate(rows) -> dict:
    """The sweep's row with the lowest held-out loss after training (or, without held-out texts,
    the lowest final training loss) among runs that did not diverge."""
    key = "heldout_change" if all("heldout_change" in r for r in rows) else "last_loss"
    ok = [r for r in rows if r["diverged_at"] is None and math.isfinite(r[key])]
    if not ok:
        raise ValueError("every run diverged: try smaller learning rates")
    return min(ok, key=lambda r: r[key])


def heldout_figure(rows, noise: float | None = None):
    """Held-out loss change against the learning rate (log axis): the sweep's verdict on texts no
    run trained on. Diverged runs are drawn in red at their (capped) change."""
    rows = [r for r in rows if "heldout_change" in r]
    if not rows:
        raise ValueError("no held-out losses: run lr_sweep with heldout=[...]")
    cap = max([abs(r["heldout_change"]) for r in rows if math.isfinite(r["heldout_change"])] + [1.0]) * 1.5
    ys = [r["heldout_change"] if math.isfinite(r["heldout_change"]) else cap for r in rows]
    colors = ["#d62728" if r["diverged_at"] or not math.isfinite(r["heldout_change"]) else "#1f77b4" for r in rows]
    text = [("diverged" if r["diverged_at"] else f"{y:+.3f}") if math.isfinite(r["heldout_change"]) else "broke"
            for r, y in zip(rows, ys)]
    fig = LabFigure()
    fig.add_scatter(x=[r["learning_rate"] for r in rows], y=ys, mode="lines+markers+text", text=text,
                    textposition="top center", marker=dict(color=colors, size=10), line=dict(color="#bbbbbb"),
                    name="held-out loss change")
    if noise:
        fig.add_hrect(y0=-noise, y1=noise, fillcolor="#cccccc", opacity=0.3, line_width=0)
    fig.add_hline(y=0, line_color="#555555", line_width=1)
    lab_layout(fig, title="Held-out loss after training minus before, per learning rate (below 0: it learned)",
               xaxis_title="learning rate (log scale)", yaxis_title="change in loss (nats/token)", height=380)
    fig.update_xaxes(type="log")
    return fig


# --- 3. schedules -----------------------------------------------------------------------------

# The schedules labkit.train accepts (TrainConfig.schedule), each with its colour in the charts.
SCHEDULE_COLORS = {"constant": "#7f7f7f", "constant_with_warmup": "#2ca02c", "linear": "#1f77b4",
                   "cosine": "#9467bd"}


def schedule_curve(name: str, total_steps: int, warmup_steps: int = 0, learning_rate: float = 1.0):
    """The learning rate used at each optimizer step 1..total_steps, read from the scheduler
    ``transformers.get_scheduler`` builds (the one the Trainer builds from ``lr_scheduler_type``)."""
    from transformers import get_scheduler

    if name not in SCHEDULES:
        raise ValueError(f"schedule={name!r}: choose one of {SCHEDULES}")
    if total_steps < 1 or warmup_steps < 0:
        raise ValueError(f"total_steps={total_steps}, warmup_steps={warmup_steps}: need total >= 1, warmup >= 0")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=learning_rate)
    kwargs = dict(num_warmup_steps=warmup_steps)
    if name != "constant_with_warmup":
        kwargs["num_training_steps"] = total_steps
    if name == "constant":
        kwargs = {}
    scheduler = get_scheduler(name, optimizer, **kwargs)
    lrs = []
    for _ in range(total_steps):
        lrs.append(scheduler.get_last_lr()[0])  # what the next optimizer.step() will use
        optimizer.step()
        scheduler.step()
    return lrs


class ScheduleExplorer:
    """Sliders for warmup and total steps; one curve per schedule, recomputed from the real
    scheduler objects. ``.controls``, ``.figure``, ``.curves``."""

    def __init__(self, total_steps: int = 100, warmup_steps: int = 10, learning_rate: float = 2e-4,
                 names=SCHEDULES):
        import ipywidgets as W

        self.names, self.learning_rate = names, learning_rate
        self.total = W.IntSlider(value=total_steps, min=2, max=1000, step=1, description="total steps",
                                 continuous_update=False, style={"description_width": "initial"})
        self.warmup = W.IntSlider(value=warmup_steps, min=0, max=500, step=1, description="warmup steps",
                                  continuous_update=False, style={"description_width": "initial"})
        self.figure = LabFigure()
        for n in names:
            self.figure.add_scatter(x=[], y=[], mode="lines", name=n, line=dict(color=SCHEDULE_COLORS[n]))
        lab_layout(self.figure, 360, legend_below=-0.2, xaxis_title="optimizer step", yaxis_title="learning rate")
        self.total.observe(self._update, "value")
        self.warmup.observe(self._update, "value")
        self.controls = W.HBox([self.total, self.warmup])
        self.curves = {}
        self._update()

    def _update(self, *_):
        total, warmup = self.total.value, min(self.warmup.value, self.total.value)
        self.curves = {n: schedule_curve(n, total, warmup, self.learning_rate) for n in self.names}
        steps = list(range(1, total + 1))
        with self.figure.batch_update():
            for trace, n in zip(self.figure.data, self.names):
                trace.x, trace.y = steps, self.curves[n]
            self.figure.layout.title = (f"Peak learning rate {self.learning_rate:g}: {warmup} warmup "
                                        f"steps, then constant, linear or cosine decay to step {total}")

    def widget(self):
        return Panel([self.controls, self.figure])


# --- 4. how big is one update? -----------------------------------------------------------------

def module_kind(name: str) -> str:
    """'q_proj', 'down_proj', 'embed_tokens', 'norm', ... from a parameter's name."""
    parts = [p for p in name.split(".") if p not in ("weight", "bias", "default", "base_layer")]
    last = parts[-1] if parts else name
    return "norm" if "norm" in last else last


class UpdateSizeCallback(TrainerCallback):
    """Measures, at every optimizer step, ``|W_after − W_before| / |W_before|`` (Frobenius norms)
    for each trainable weight. ``rows``: one dict per (step, parameter)."""

    def __init__(self, every: int = 1, include=None):
        self.every, self.include = every, include
        self.rows: list[dict] = []
        self._before: dict[str, torch.Tensor] = {}
        self._step = 0

    def _params(self, model):
        for name, p in model.named_parameters():
            if p.requires_grad and (self.include is None or self.include(name)):
                yield name, p

    def on_step_begin(self, args, state, control, model=None, **kw):
        self._step = state.global_step + 1
        self._before = {}
        if model is not None and (self._step - 1) % self.every == 0:
            self._before = {n: p.detach().float().clone() for n, p in self._params(model)}

    def on_step_end(self, args, state, control, model=None, **kw):
        if model is None or not self._before:
            return
        for name, p in self._params(model):
            if name in self._before:
                old = self._before[name]
                delta = p.detach().float() - old
                ratio = float(delta.norm() / old.norm().clamp_min(1e-12))
                row = {"step": self._step, "parameter": name, "kind": module_kind(name),
                       "numel": p.numel(), "relative_update": ratio}
                if row["kind"] == "embed_tokens" and delta.dim() == 2:   # which token rows moved at all
                    row["rows_changed"] = float((delta.abs().amax(dim=1) > 0).float().mean())
                self.rows.append(row)
        self._before = {}

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows)


def update_size_summary(rows) -> dict:
    """Median and 5th/95th percentiles of the relative update over all (step, weight) pairs, and
    the share inside the often-quoted 0.01%-0.1% (1e-4 to 1e-3) band."""
    values = np.array([r["relative_update"] for r in rows], dtype=float)
    if values.size == 0:
        raise ValueError("no update sizes were recorded")
    return {"median": float(np.median(values)), "p05": float(np.percentile(values, 5)),
            "p95": float(np.percentile(values, 95)),
            "share_in_claimed_band": float(np.mean((values >= 1e-4) & (values <= 1e-3))),
            "share_above_band": float(np.mean(values > 1e-3)),
            "share_below_band": float(np.mean(values < 1e-4)), "n": int(values.size)}


def embedding_vs_linear(rows) -> dict:
    """The embedding's median relative step against the blocks' linear layers' (``*_proj``), and
    the median share of the embedding's rows (one per vocabulary token) that moved in a step."""
    emb = [r for r in rows if r["kind"] == "embed_tokens"]
    lin = [r["relative_update"] for r in rows if r["kind"].endswith("_proj")]
    if not emb or not lin:
        raise ValueError("need update sizes of the embedding and of linear layers (full fine-tuning)")
    return {"embedding_median": float(np.median([r["relative_update"] for r in emb])),
            "linear_median": float(np.median(lin)),
            "embedding_rows_changed": float(np.median([r.get("rows_changed", float("nan")) for r in emb]))}


def update_size_figure(rows, title: str | None = None):
    """A box per module kind of the per-step relative update (log scale), with the claimed band."""
    summary = update_size_summary(rows)
    kinds = sorted({r["kind"] for r in rows})
    fig = LabFigure()
    for k in kinds:
        fig.add_box(y=[r["relative_update"] for r in rows if r["kind"] == k], name=k, boxpoints=False,
                    marker_color="#d62728")
    fig.add_hrect(y0=1e-4, y1=1e-3, fillcolor="green", opacity=0.12, line_width=0,
                  annotation_text="claimed 0.01%-0.1% per step", annotation_position="top left")
    fig.update_yaxes(type="log")
    title = title or (f"Measured per-step |ΔW|/|W|: median {summary['median']:.2e}; "
                      f"{summary['share_in_claimed_band']:.0%} inside the claimed band")
    return lab_layout(fig, 400, title=title, xaxis_title="module kind (all layers pooled)",
                      yaxis_title="relative update per step |ΔW|/|W| (log)", showlegend=False)
