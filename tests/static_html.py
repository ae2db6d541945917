"""Static renderings of executed notebooks: nbconvert HTML opened in Chromium with no kernel, no
widget JavaScript and no network, as a reader of the course site, nbviewer or an emailed HTML file
sees it. Every plotly chart on the page must be drawn and hold data.

The executed notebooks are exported without widget state, as JupyterLab saves them by default;
nbconvert then shows each box of controls through its static copy (``text/html``, see
``labkit.plots.Panel``). A notebook saved *with* widget state needs
``@jupyter-widgets/html-manager`` from a CDN to show its controls: not checked here."""
from __future__ import annotations

from pathlib import Path

# Every chart-like element on the page and what plotly drew into it (read in the browser).
READ_PLOTS = """() => Array.from(document.querySelectorAll('.labkit-figure, .js-plotly-plot, .plotly-graph-div'))
  .filter((el, i, all) => !all.some(o => o !== el && o.contains(el)))
  .map(el => {
    const traces = el.data || [];
    const bytes = {f8: 8, f4: 4, i4: 4, u4: 4, i2: 2, u2: 2, i1: 1, u1: 1, u1c: 1, i8: 8, u8: 8};
    const n = v => !v ? 0 : v.length !== undefined ? v.length       // a list, or plotly's base64 array:
      : v.bdata ? (v.shape ? String(v.shape).split(',').reduce((a, b) => a * +b, 1)
                           : atob(v.bdata).length / (bytes[v.dtype] || 1)) : 0;
    const points = traces.reduce((s, t) => s + Math.max(n(t.x), n(t.y), n(t.z), n(t.values), n(t.r)), 0);
    const title = el.layout && el.layout.title ? (el.layout.title.text || el.layout.title) : '';
    return {id: el.id, drawn: !!el._fullLayout, traces: traces.length, points: points,
            title: String(title || ''), text: (el.textContent || '').slice(0, 200)};
  })"""


def export_html(nb, path: Path) -> Path:
    """The executed notebook as nbconvert's default (lab) HTML page."""
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nb)
    path.write_text(body, encoding="utf-8")
    return path


def offline_page(context):
    """A tab that may load nothing from the network (file:// and data: only)."""
    page = context.new_page()
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(("file:", "data:"))
               else route.abort())
    return page


def read_plots(page, html: Path, settle_s: float = 20.0) -> list[dict]:
    """Open ``html`` and return one entry per chart once every chart has been drawn (or ``settle_s``
    has passed: a chart still undrawn then is reported as such)."""
    import time

    page.goto(html.as_uri(), wait_until="load")
    deadline = time.monotonic() + settle_s
    while True:
        plots = page.evaluate(READ_PLOTS)
        if all(p["drawn"] for p in plots) or time.monotonic() > deadline:
            return plots
        time.sleep(0.25)


def plots_without_data(plots: list[dict]) -> list[str]:
    """A line for each chart that was not drawn or holds no data point."""
    return [f"{p['title'] or p['id'] or 'untitled chart'}: "
            + ("never drawn (" + (p["text"] or "no plotly.js on the page") + ")" if not p["drawn"] else "no data")
            for p in plots if not p["drawn"] or p["points"] == 0]
