"""The lab's colours and standard figures (plotly). Each method keeps one colour in every
notebook, so a learner can read a chart at a glance."""
from __future__ import annotations

import plotly.graph_objects as go

COLORS = {
    "base": "#7f7f7f",      # the model before any tuning
    "full": "#d62728",      # full fine-tuning
    "lora": "#1f77b4",      # LoRA
    "qlora": "#2ca02c",     # QLoRA
    "dora": "#9467bd",      # DoRA
    "after": "#ff7f0e",     # "after" when the method does not matter
}


def color(name: str) -> str:
    return COLORS.get(name, COLORS["after"])


def _layout(fig, title, xaxis_title, yaxis_title, height=360):
    fig.update_layout(title=title, xaxis_title=xaxis_title, yaxis_title=yaxis_title, height=height,
                      margin=dict(l=60, r=20, t=60, b=50), legend=dict(orientation="h", y=-0.2))
    return fig


def top_k_bar(table, title: str = "Next-token probabilities", figure=None, name: str = "model",
              bar_color: str | None = None):
    """A bar per candidate token (a table from ``predictions.next_token_distribution``).
    Pass an existing ``figure`` (e.g. a ``FigureWidget``) to redraw it in place."""
    labels = [repr(t)[1:-1] or "∅" for t in table["token"]]  # show spaces and newlines visibly
    fig = figure if figure is not None else go.Figure()
    with fig.batch_update() if hasattr(fig, "batch_update") else _nullcontext():
        if len(fig.data) == 0:
            fig.add_bar(x=labels, y=list(table["probability"]), name=name,
                        marker_color=bar_color or COLORS["base"])
        else:
            fig.data[0].x, fig.data[0].y = labels, list(table["probability"])
        _layout(fig, title, "candidate next token (spaces shown as ' ')", "probability")
        fig.update_yaxes(range=[0, 1])
    return fig


def before_after_bar(before: dict, after: dict, title: str, yaxis_title: str = "probability",
                     after_name: str = "after", after_key: str = "after"):
    """Grouped bars: a value per label, before and after tuning."""
    labels = list(before)
    fig = go.Figure()
    fig.add_bar(x=labels, y=[before[k] for k in labels], name="before", marker_color=COLORS["base"])
    fig.add_bar(x=labels, y=[after[k] for k in labels], name=after_name, marker_color=color(after_key))
    return _layout(fig, title, "", yaxis_title)


def loss_curves(histories: dict, title: str = "Training loss", eval_too: bool = True):
    """One line per run: ``{"LoRA": history, "full": history}``; colours by method name."""
    fig = go.Figure()
    for name, h in histories.items():
        c = color(name.lower().split()[0])
        fig.add_scatter(x=[r["step"] for r in h.rows], y=h.losses, name=name, mode="lines",
                        line=dict(color=c))
        if eval_too and h.evals:
            fig.add_scatter(x=[e["step"] for e in h.evals], y=h.eval_losses, name=f"{name} (validation)",
                            mode="lines+markers", line=dict(color=c, dash="dash"))
    return _layout(fig, title, "optimizer step", "loss (cross-entropy, nats/token)")


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class FigureWidget(go.FigureWidget):
    """plotly's ``FigureWidget`` that keeps its whole state in the traits the browser reads first.

    plotly sends each change (a new trace, new y values, a new title) to the browser as a one-off
    message. A browser that is still loading plotly's front end when those messages arrive (the
    first time a notebook shows a chart, or on a busy machine) misses them and shows empty axes,
    and a chart inside a box of controls is never re-sent in full. Copying the figure into the
    synced state after every change means the browser always starts from the complete figure.
    """

    def _sync_state(self):
        from copy import deepcopy

        self._widget_layout = deepcopy(self._layout_obj._props)
        self._widget_data = deepcopy(self._data)

    def _send_relayout_msg(self, *args, **kwargs):
        super()._send_relayout_msg(*args, **kwargs)
        self._sync_state()

    def _send_restyle_msg(self, *args, **kwargs):
        super()._send_restyle_msg(*args, **kwargs)
        self._sync_state()

    def _send_addTraces_msg(self, *args, **kwargs):
        super()._send_addTraces_msg(*args, **kwargs)
        self._sync_state()

    def _send_deleteTraces_msg(self, *args, **kwargs):
        super()._send_deleteTraces_msg(*args, **kwargs)
        self._sync_state()

    def _send_moveTraces_msg(self, *args, **kwargs):
        super()._send_moveTraces_msg(*args, **kwargs)
        self._sync_state()

    def _send_update_msg(self, *args, **kwargs):
        super()._send_update_msg(*args, **kwargs)
        self._sync_state()
