"""The course, readable without running it: every notebook executed in one profile and exported to a
static HTML page (prose, code, printed results and every chart with its data), with an index.

    .venv/bin/python benchmarks/build_site.py                     # cpu profile, into site/
    .venv/bin/python benchmarks/build_site.py --profile smoke --only 00 --out /tmp/site
    .venv/bin/python benchmarks/build_site.py --executed DIR      # pages from notebooks executed elsewhere

Each page starts with a banner naming the machine, the profile, the date of the run and labkit's git
commit; ``index.html`` lists the notebooks with their run time in this build. The notebooks run in
order in fresh kernels, as a learner goes through them (09 and 12 reuse what 08, 05 and 07 saved).
Everything they make, their claims ledgers included, goes to a folder of the build's own
(``LABKIT_OUTPUTS``): a build leaves a learner's ``outputs/`` alone, and notebook 12's course table
shows this run's claims.

The pages are exported as ``tests/test_notebooks.py`` exports them (nbconvert's HTML exporter,
widget state dropped, as JupyterLab saves by default), and then opened in Chromium with no kernel
and no network (``tests/static_html.py``): the build fails when any chart is not drawn or holds no
data (``--no-check`` skips this, e.g. where Chromium is missing). A notebook that fails keeps its
page, up to the failing cell, and the build exits with status 1.

With ``--executed DIR`` nothing is executed: the pages are made from ``DIR/NN_*.ipynb`` (run times
from ``DIR/times.json``, ``{"00_start_here": 16.1, ...}``, where present; the date is when the last of
them was written; the machine named is this one, so build on the machine that executed them).
"""
from __future__ import annotations

import argparse
import datetime as dt
import html
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))
from common import machine  # noqa: E402

PROFILES = ("smoke", "cpu", "gpu")
BANNER_ID = "labkit-site-banner"
CHART_MIME = "application/vnd.plotly.v1+json"


class TooLong(Exception):
    pass


def _alarm(signum, frame):
    raise TooLong


def git_commit() -> str:
    """labkit's commit, with a note when the working tree differs from it."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return sha + (" with uncommitted changes" if dirty else "")


def notebook_paths(only: list[str] | None) -> list[Path]:
    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if only:
        paths = [p for p in paths if p.name[:2] in only]
        missing = sorted(set(only) - {p.name[:2] for p in paths})
        if missing:
            raise SystemExit(f"no notebook numbered {', '.join(missing)} in {NOTEBOOKS}")
    return paths


def execute(path: Path, profile: str, limit_s: int, ledger: Path) -> tuple[nbformat.NotebookNode, float, str]:
    """Run ``path`` top to bottom in a fresh kernel; the notebook (with the outputs it got to), its
    wall time and a status: "ok", "error in cell N: ..." or "stopped at the limit"."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    os.environ["LABKIT_PROFILE"] = profile
    os.environ["LABKIT_OUTPUTS"] = str(ledger)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=limit_s, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(limit_s)
    try:
        client.execute()
        status = "ok"
    except TooLong:
        status = f"stopped at the {limit_s} s limit"
    except CellExecutionError as e:
        cell = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code" for o in c.get("outputs", [])
                     if o.get("output_type") == "error"), None)
        status = f"error in cell {cell}: {e.ename}: {str(e.evalue)[:200]}"
    except Exception as e:  # a dead kernel, a timeout: keep the page, say what happened
        status = f"error: {type(e).__name__}: {str(e)[:200]}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return nb, time.perf_counter() - start, status


def title_of(nb) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return ""


def chart_outputs(nb) -> int:
    """Outputs that hold a chart: plotly's own output, or labkit's self-drawing copy."""
    return sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
               if CHART_MIME in o.get("data", {}) or "labkit-figure" in str(o.get("data", {}).get("text/html", "")))


def banner_html(run: dict, page: dict | None = None) -> str:
    rows = [("machine", run["machine"]), ("profile", run["profile"]), ("run", run["date"]),
            ("labkit commit", run["commit"])]
    if page is not None:
        rows.append(("this notebook", f"{page['seconds']:.1f} s, {page['status']}" if page["seconds"] is not None
                     else page["status"]))
    items = "".join(f"<div><b>{html.escape(k)}:</b> {html.escape(str(v))}</div>" for k, v in rows)
    failed = page is not None and page["status"] != "ok"
    colour = "#fde8e8" if failed else "#eef4fb"
    return (f'<div id="{BANNER_ID}" style="font:14px/1.45 system-ui,sans-serif;background:{colour};'
            f'border-bottom:1px solid #9bb;padding:10px 24px;color:#123">'
            f'<div style="font-weight:600">Fine-Tuning Lab, as run on this machine '
            f'(<a href="index.html" style="color:#0645ad;text-decoration:underline">all notebooks</a>)</div>'
            f'{items}</div>')


def add_banner(page_html: str, banner: str) -> str:
    """``banner`` right after ``<body ...>``."""
    start = page_html.find("<body")
    end = page_html.find(">", start)
    if start < 0 or end < 0:
        raise ValueError("the exported page has no <body>")
    return page_html[:end + 1] + banner + page_html[end + 1:]


def write_page(nb, out: Path, run: dict, page: dict) -> Path:
    from static_html import export_html

    nb.metadata.pop("widgets", None)   # as JupyterLab saves by default: the static copies show instead
    target = out / page["file"]
    export_html(nb, target)
    target.write_text(add_banner(target.read_text(encoding="utf-8"), banner_html(run, page)), encoding="utf-8")
    return target


def index_html(run: dict, pages: list[dict]) -> str:
    def secs(p):
        return f"{p['seconds']:.1f}" if p["seconds"] is not None else "not timed"

    rows = "".join(
        f"<tr><td><a href=\"{html.escape(p['file'])}\">{html.escape(p['notebook'])}</a></td>"
        f"<td>{html.escape(p['title'])}</td><td style=\"text-align:right\">{secs(p)}</td>"
        f"<td style=\"text-align:right\">{p['charts']}</td><td>{html.escape(p['status'])}</td>"
        f"<td>{html.escape(p.get('charts_check', 'not checked'))}</td></tr>" for p in pages)
    total = sum(p["seconds"] for p in pages if p["seconds"] is not None)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Fine-Tuning Lab ({html.escape(run['profile'])} profile)</title>
<style>body{{margin:0;font:15px/1.5 system-ui,sans-serif}} main{{padding:16px 24px}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccd;padding:4px 10px}} th{{background:#f3f5f8}}</style>
</head><body>{banner_html(run)}<main>
<h1>Fine-Tuning Lab</h1>
<p>Every notebook of the course, executed top to bottom in the <code>{html.escape(run['profile'])}</code> profile, in
order, each in a fresh kernel, with its printed results and charts. Nothing here needs a kernel: the controls of the
explorers are inert, their charts show what the run drew.</p>
<table><tr><th>notebook</th><th>title</th><th>run time (s)</th><th>charts</th><th>run</th><th>charts in Chromium</th></tr>
{rows}</table>
<p>Total run time: {total:.0f} s. Built by <code>benchmarks/build_site.py</code>.</p>
</main></body></html>
"""


def check_pages(pages: list[dict], out: Path) -> list[str]:
    """Open every page in Chromium (no kernel, no network): each chart drawn and holding data, its
    labels free of the defects ``static_html.label_defects`` names. Sets each page's
    ``charts_check``; returns the problems."""
    from playwright.sync_api import sync_playwright

    from browser_helpers import CHROMIUM_ARGS, chromium_path
    from static_html import label_defects, offline_page, plots_without_data, read_plots

    problems = []
    with sync_playwright() as p, tempfile.TemporaryDirectory(prefix="labkit-site-chromium-") as profile_dir:
        context = p.chromium.launch_persistent_context(profile_dir, executable_path=chromium_path(),
                                                       args=CHROMIUM_ARGS, headless=True,
                                                       viewport={"width": 1280, "height": 1000})
        try:
            for page in pages:
                tab = offline_page(context)
                try:
                    plots = read_plots(tab, out / page["file"])
                    has_banner = tab.locator(f"#{BANNER_ID}").count() == 1
                finally:
                    tab.close()
                empty = plots_without_data(plots)
                found = []
                if not has_banner:
                    found.append(f"{page['file']}: no banner")
                if len(plots) < page["charts"]:
                    found.append(f"{page['file']}: {page['charts']} chart outputs but {len(plots)} charts on the page")
                found += [f"{page['file']}: {e}" for e in empty + label_defects(plots)]
                page["charts_check"] = (f"{len(plots)} drawn, all with data and clean labels" if not found
                                        else f"{len(found)} problem(s)")
                problems += found
        finally:
            context.close()
    return problems


def build(profile: str, out: Path, only: list[str] | None = None, executed: Path | None = None,
          limit_s: int = 900, check: bool = True) -> tuple[list[dict], list[str]]:
    """Build the pages and the index into ``out``; returns the pages and the problems found (failed
    notebooks, charts without data)."""
    if profile not in PROFILES:
        raise SystemExit(f"--profile {profile!r}: choose one of {PROFILES}")
    out.mkdir(parents=True, exist_ok=True)
    run = {"machine": machine(), "profile": profile, "commit": git_commit(),
           "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    times = {}
    if executed is not None and (executed / "times.json").exists():
        times = json.loads((executed / "times.json").read_text())
    ledger = Path(tempfile.mkdtemp(prefix=f"labkit-site-claims-{profile}-"))
    pages, problems = [], []
    for path in notebook_paths(only):
        if executed is not None:
            source = executed / path.name
            if not source.exists():
                problems.append(f"{path.name}: not in {executed}")
                continue
            nb, seconds, status = nbformat.read(source, as_version=4), times.get(path.stem), "ok"
            written = dt.datetime.fromtimestamp(source.stat().st_mtime, dt.timezone.utc)
            run["date"] = f"executed by {written:%Y-%m-%d %H:%M} UTC (the notebooks in {executed})"
        else:
            nb, seconds, status = execute(path, profile, limit_s, ledger)
        page = {"notebook": path.stem, "file": path.stem + ".html", "title": title_of(nb), "seconds": seconds,
                "status": status, "charts": chart_outputs(nb)}
        write_page(nb, out, run, page)
        pages.append(page)
        print(f"{path.stem}: {status}" + (f", {seconds:.1f} s" if seconds is not None else "") +
              f", {page['charts']} charts -> {out / page['file']}", flush=True)
        if status != "ok":
            problems.append(f"{path.stem}: {status}")
    if check and pages:
        problems += check_pages(pages, out)
    (out / "index.html").write_text(index_html(run, pages), encoding="utf-8")
    (out / "run.json").write_text(json.dumps({**run, "pages": pages, "problems": problems}, indent=1))
    return pages, problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="cpu", choices=PROFILES)
    ap.add_argument("--out", type=Path, default=ROOT / "site", help="the folder of the pages (default: site/)")
    ap.add_argument("--only", nargs="*", default=None, help="notebook number prefixes, e.g. 00 01")
    ap.add_argument("--executed", type=Path, default=None,
                    help="make the pages from the executed notebooks in this folder instead of running them")
    ap.add_argument("--limit-s", type=int, default=900, help="stop a notebook that runs longer than this")
    ap.add_argument("--no-check", action="store_true", help="do not open the pages in Chromium")
    args = ap.parse_args(argv)
    pages, problems = build(args.profile, args.out, args.only, args.executed, args.limit_s, not args.no_check)
    print(f"\n{len(pages)} pages in {args.out}; open {args.out / 'index.html'}")
    if problems:
        print(f"{len(problems)} problem(s):\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
