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
    const label = t => !t ? '' : String(t.text !== undefined ? t.text : t);
    const layout = el._fullLayout || el.layout || {};
    const axes = Object.keys(layout).filter(k => /^[xy]axis\d*$/.test(k))
      .map(k => ({axis: k, title: label(layout[k].title), range: layout[k].range || null,
                  autorange: layout[k].autorange}));
    return {id: el.id, drawn: !!el._fullLayout, traces: traces.length, points: points,
            title: label(el.layout && el.layout.title), text: (el.textContent || '').slice(0, 200),
            axes: axes,
            series: traces.map(t => ({name: String(t.name || ''), type: t.type || 'scatter',
                                      points: Math.max(n(t.x), n(t.y), n(t.z), n(t.values), n(t.r)),
                                      visible: t.visible === undefined ? true : t.visible,
                                      colors: t.marker && Array.isArray(t.marker.color) ? t.marker.color.map(String) : null,
                                      ys: Array.isArray(t.y) ? t.y.slice(0, 50) : null,
                                      xs: Array.isArray(t.x) ? t.x.slice(0, 50).map(String) : null}))};
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


# Words that mean a label was built from a missing value ("layer 0 nan", "None", "undefined").
_BAD_WORD = r"\b(nan|NaN|None|undefined|null|inf)\b"


def label_defects(plots: list[dict]) -> list[str]:
    """A line for each chart whose labels a reader would stumble on (issue #22's list):

    - a title, axis title or legend name showing a missing value (``nan``, ``None``, ``undefined``);
    - a legend entry with no points (an empty validation trace in a live loss plot);
    - a reward-model or DPO loss labelled as a cross-entropy per token (it is a pairwise loss);
    - a probability axis pinned to [0, 1] on a chart whose bars all sit below 0.05 (invisible bars);
    - a chart titled "... prefers A" whose bar for A is not the taller one or has the loser's colour."""
    import re

    problems = []
    for p in plots:
        name = p.get("title") or p.get("id") or "untitled chart"
        labels = [("title", p.get("title", ""))] + [(a["axis"] + " title", a["title"]) for a in p.get("axes", [])] \
            + [("trace name", s["name"]) for s in p.get("series", [])]
        for where, text in labels:
            if re.search(_BAD_WORD, text or ""):
                problems.append(f"{name}: {where} {text!r} shows a missing value")
        has_data = any(s["points"] for s in p.get("series", []))  # an empty chart is reported once, as "no data"
        for s in p.get("series", []) if has_data else []:
            if s["name"] and s["points"] == 0 and s["visible"] is True:
                problems.append(f"{name}: legend entry {s['name']!r} has no points")
        pairwise = re.search(r"reward model|DPO", name, re.I)
        for a in p.get("axes", []):
            if pairwise and re.search(r"cross-entropy|nats/token", a["title"] or "", re.I):
                problems.append(f"{name}: {a['axis']} says {a['title']!r}, but this loss is pairwise, not per token")
            ys = [y for s in p.get("series", []) if s["type"] == "bar" and s["ys"] for y in s["ys"]
                  if isinstance(y, (int, float))]
            if a["axis"].startswith("yaxis") and a["range"] and list(a["range"]) == [0, 1] \
                    and a.get("autorange") is not True and ys and max(ys) < 0.05:
                problems.append(f"{name}: y-axis fixed at [0, 1] while every bar is below 0.05 (bars invisible)")
        won = re.search(r"prefers (\w+)\b", p.get("title") or "")
        for s in p.get("series", []):
            if won and s["type"] == "bar" and s["xs"] and won.group(1) in s["xs"] and s["ys"] and len(s["xs"]) == 2:
                w = s["xs"].index(won.group(1))
                if s["ys"][w] < s["ys"][1 - w]:
                    problems.append(f"{name}: the title names {won.group(1)} but its bar is the shorter one")
                if s["colors"] and s["colors"][w] == s["colors"][1 - w]:
                    problems.append(f"{name}: winner and loser drawn in the same colour")
    return problems
