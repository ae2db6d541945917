"""The lab's colours, the frame every chart gets (:func:`lab_layout`), and standard figures
(plotly). Each method keeps one colour in every notebook, so a learner can read a chart at a glance."""
from __future__ import annotations

from contextlib import contextmanager

import ipywidgets as W
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


def lab_layout(fig, height: int = 360, top: int = 60, bottom: int = 50, left: int = 60,
               legend_below: float | None = None, **layout):
    """The lab's layout for a figure, so every chart has the same frame: ``height`` in pixels and
    margins that leave room for the axis titles (``left``, ``bottom``) and the title (``top``: 60
    for one line, 70-80 for a long title or subplot titles under it). ``legend_below=-0.2`` puts a
    horizontal legend under the plot, that far down (a share of the plot's height). Any other
    keyword (``title``, ``xaxis_title``, ``showlegend``, ...) goes to ``fig.update_layout``.
    Returns ``fig``."""
    if legend_below is not None:
        layout["legend"] = dict(orientation="h", y=legend_below)
    fig.update_layout(height=height, margin=dict(l=left, r=20, t=top, b=bottom), **layout)
    return fig


def top_k_bar(table, title: str = "Next-token probabilities", figure=None, name: str = "model",
              bar_color: str | None = None):
    """A bar per candidate token (a table from ``predictions.next_token_distribution``).
    Pass an existing ``figure`` (e.g. a :class:`LabFigure`) to redraw it in place."""
    labels = [repr(t)[1:-1] or "∅" for t in table["token"]]  # show spaces and newlines visibly
    fig = figure if figure is not None else LabFigure()
    with fig.batch_update():
        if len(fig.data) == 0:
            fig.add_bar(x=labels, y=list(table["probability"]), name=name,
                        marker_color=bar_color or COLORS["base"])
        else:
            fig.data[0].x, fig.data[0].y = labels, list(table["probability"])
        lab_layout(fig, title=title, xaxis_title="candidate next token (spaces shown as ' ')",
                   yaxis_title="probability", legend_below=-0.2)
        top = max(table["probability"], default=1.0)   # small bars stay visible at high temperature
        fig.update_yaxes(range=[0, min(1.0, 1.15 * top)])
    return fig


def loss_curves(histories: dict, title: str = "Training loss", eval_too: bool = True):
    """One line per run: ``{"LoRA": history, "full": history}``; colours by method name."""
    fig = LabFigure()
    for name, h in histories.items():
        c = color(name.lower().split()[0])
        fig.add_scatter(x=[r["step"] for r in h.rows], y=h.losses, name=name, mode="lines",
                        line=dict(color=c))
        if eval_too and h.evals:
            fig.add_scatter(x=[e["step"] for e in h.evals], y=h.eval_losses, name=f"{name} (validation)",
                            mode="lines+markers", line=dict(color=c, dash="dash"))
    return lab_layout(fig, title=title, xaxis_title="optimizer step", yaxis_title="loss (cross-entropy, nats/token)",
                      legend_below=-0.2)


# ---- figures that show everywhere -------------------------------------------------------------
#
# A chart must render in JupyterLab, Notebook 7, VS Code, Colab (its own ipywidgets, no custom
# widget manager) and in static HTML (nbconvert, the course site). So labkit never relies on
# plotly's FigureWidget. A figure is shown as an ordinary output holding two renderings:
#   - application/vnd.plotly.v1+json, drawn by JupyterLab's and VS Code's own plotly renderer;
#   - text/html, a <div> that plotly.js draws: Colab, nbconvert and any browser without a kernel.
# plotly.js itself goes into the page once per kernel (in Colab, where every output is its own
# frame, each chart loads it from plotly's CDN). A chart that changes (a loss curve while training,
# a chart under sliders) is redrawn by replacing that output: through its display handle for a
# chart in a cell's output, through an ``ipywidgets.Output`` for a chart inside a box of controls.

_PLOTLYJS_SHOWN = {"done": False}
PLOTLY_MIME = "application/vnd.plotly.v1+json"


def in_colab() -> bool:
    import sys

    import plotly.io as pio

    return "google.colab" in sys.modules or "colab" in str(pio.renderers.default)


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def plotlyjs_html() -> str:
    """plotly.js as one ``<script>`` (about 4.6 MB), hidden from require.js if a page has it."""
    from plotly.offline import get_plotlyjs

    return ("<script>window.PlotlyConfig = {MathJaxConfig: 'local'}; "
            "window.__labkitDefine = window.define; window.define = undefined;</script>"
            f"<script>{get_plotlyjs()}</script>"
            "<script>window.define = window.__labkitDefine;</script>")


def ensure_plotlyjs():
    """Put plotly.js into the page once per kernel, so the text/html renderings can draw."""
    if _PLOTLYJS_SHOWN["done"] or in_colab() or not _in_kernel():
        return
    from IPython.display import HTML, display

    display(HTML(plotlyjs_html()))
    _PLOTLYJS_SHOWN["done"] = True


def figure_html(fig) -> str:
    """A self-contained ``<div>`` that plotly.js draws ``fig`` into (waits up to 10 s for it)."""
    import uuid

    import plotly.io as pio

    div = f"labkit-{uuid.uuid4().hex}"
    height = fig.layout.height or 420
    load = ""
    if in_colab():
        from plotly.offline import get_plotlyjs_version

        load = f'<script src="https://cdn.plot.ly/plotly-{get_plotlyjs_version()}.min.js"></script>'
    return (f'{load}<div id="{div}" class="labkit-figure" style="width:100%;height:{height}px"></div>'
            "<script>(function () {"
            f"var fig = {pio.to_json(fig, validate=False)}; var tries = 0;"
            f"function draw() {{ var gd = document.getElementById('{div}'); if (!gd) return;"
            "  if (window.Plotly) { fig.config = {responsive: true}; window.Plotly.newPlot(gd, fig); return; }"
            "  if (++tries < 100) { setTimeout(draw, 100); return; }"
            "  gd.textContent = 'This chart needs plotly.js, which this page has not loaded: run the notebook from the top.'; }"
            "draw(); })();</script>")


def figure_bundle(fig) -> dict:
    """The mime bundle a notebook front end receives for ``fig`` (see the note above)."""
    import json

    import plotly.io as pio

    title = fig.layout.title.text or "untitled"
    bundle = {"text/plain": f"<figure: {title}>", "text/html": figure_html(fig)}
    if not in_colab():
        bundle[PLOTLY_MIME] = {**json.loads(pio.to_json(fig, validate=False)),
                                                    "config": {"responsive": True}}
    return bundle


class LabFigure(go.Figure):
    """A plotly ``Figure`` that shows itself in every notebook front end and redraws in place.

        fig = LabFigure(layout=dict(title="loss"))
        fig.show()                      # or: the last line of a cell, or display(fig)
        with fig.batch_update():        # change it: every place it is shown redraws once
            fig.add_scatter(x=[1, 2], y=[3, 1])
        fig.refresh()                   # after changes made outside batch_update()
        box = ipywidgets.VBox([slider, fig.as_widget()])   # the same figure inside controls
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._handles, self._outputs, self._depth = [], [], 0

    @contextmanager
    def batch_update(self):
        self._depth += 1
        try:
            with super().batch_update():
                yield self
        finally:
            self._depth -= 1
        if self._depth == 0:
            self.refresh()

    def refresh(self):
        """Redraw every place this figure is shown."""
        if not (self._handles or self._outputs):
            return
        bundle = figure_bundle(self)
        for handle in self._handles:
            # JupyterLab hands an updated output to the renderer that drew it, and plotly's renderer
            # ignores a second figure; a text-only step in between gets a fresh renderer.
            if PLOTLY_MIME in bundle:
                handle.update({"text/plain": bundle["text/plain"]}, raw=True)
            handle.update(bundle, raw=True)
        for out in self._outputs:
            out.outputs = ({"output_type": "display_data", "data": bundle, "metadata": {}},)

    def show(self, *args, **kwargs):
        """Show the figure as a cell output that :meth:`refresh` redraws."""
        from IPython.display import display

        ensure_plotlyjs()
        self._handles.append(display(figure_bundle(self), raw=True, display_id=True))

    def _ipython_display_(self):
        self.show()

    def as_widget(self):
        """An ``ipywidgets.Output`` showing this figure, to put in a box of controls."""
        import ipywidgets as W

        out = W.Output()
        self._outputs.append(out)
        out.outputs = ({"output_type": "display_data", "data": figure_bundle(self), "metadata": {}},)
        return out


def snapshot_html(figures) -> str:
    """Charts as last drawn, for renderings without a kernel or widget JavaScript."""
    note = "Interactive controls: they work in a running notebook."
    if not figures:
        return f"<p><i>{note}</i></p>"
    return f"<p><i>{note} Their charts as last drawn:</i></p>" + "".join(figure_html(f) for f in figures)


class Panel(W.VBox):
    """Controls and charts in a column (an ``ipywidgets.VBox``). A :class:`LabFigure` among the
    children is shown through an ``Output`` that redraws it; the panel's output also carries a
    static copy of its charts (``text/html``), which nbconvert and the course site show where no
    widget JavaScript runs. Works with ipywidgets 8 and with Colab's ipywidgets 7."""

    def __init__(self, children, **kwargs):
        children = list(children)
        super().__init__([c.as_widget() if isinstance(c, LabFigure) else c for c in children], **kwargs)
        self.figures = [c for c in children if isinstance(c, LabFigure)]

    def _repr_mimebundle_(self, **kwargs):
        ensure_plotlyjs()
        if hasattr(W.VBox, "_repr_mimebundle_"):     # ipywidgets 8
            bundle = dict(super()._repr_mimebundle_(**kwargs))
        else:                                        # ipywidgets 7 (Colab)
            bundle = {"text/plain": repr(self), "application/vnd.jupyter.widget-view+json":
                      {"version_major": 2, "version_minor": 0, "model_id": self.model_id}}
        bundle["text/html"] = snapshot_html(self.figures)
        return bundle

    def _ipython_display_(self, **kwargs):
        from IPython.display import display

        display(self._repr_mimebundle_(), raw=True)
