"""The lab as a learner meets it: JupyterLab in a real (headless) Chromium.

Starts JupyterLab on localhost (its own port and token; stopped afterwards), opens notebook 01,
runs every cell, types a prompt into the prompt explorer and checks that the plotly chart on the
page changes; then runs a short training (``labkit.train(..., live=True)`` on the toy model) in a
small notebook written here and checks that the live loss curve, updated step by step from the
kernel, shows one point per optimizer step and is drawn while training runs. The widgets' and
plotly's front ends come from the pip packages (jupyterlab_widgets, plotly's jupyterlab-plotly):
nothing is built or installed by hand. Charts are ``labkit.plots.LabFigure`` outputs, redrawn by
replacing the output (tests/test_notebooks.py checks the static renderings).

Screenshots and the server logs are left in tests/_artifacts/ (git-ignored)."""
from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest

from browser_helpers import (ARTIFACTS, CHROMIUM_ARGS, KERNEL_IDLE, LabServer, chromium_path, error_outputs,
                             open_notebook, plot_point_count, plot_texts, run_all_cells,
                             screenshot, start_run_all, wait_until_run, widget_errors)

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
NOTEBOOK_01 = "01_pretrained_behavior.ipynb"
SERVER_ENV = {"LABKIT_PROFILE": "smoke", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
TRAIN_STEPS = 6


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Debian's Chromium, headless, with a new empty profile."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: pip install -r requirements.txt")
    executable = chromium_path()   # fails with how to install it
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=executable,
            args=CHROMIUM_ARGS, headless=True, viewport={"width": 1280, "height": 1000})
        context.set_default_timeout(120_000)
        yield context
        context.close()


@pytest.fixture
def page(browser, request):
    """A fresh tab; its last state is saved as a screenshot (kept for inspection when a test fails)."""
    page = browser.new_page()
    messages = []
    page.on("console", lambda m: messages.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: messages.append(f"page error: {e}"))
    yield page
    screenshot(page, request.node.name + "-last")
    (ARTIFACTS / f"{request.node.name}-console.log").write_text("\n".join(messages))
    page.close()


def _explorer_cell(page):
    """The output area that holds a text box and a plotly chart: the prompt explorer."""
    cells = page.locator(".jp-CodeCell").filter(has=page.locator(".widget-text input")).filter(
        has=page.locator(".js-plotly-plot"))
    assert cells.count() >= 1, "no cell shows a text box together with a plotly chart (the prompt explorer)"
    return cells.first


EMPTY_RENDER = ("a labkit chart rendered as empty axes (no title, no data) and never recovered: "
                "see tests/_artifacts/ for the screenshot")


def _rendered_empty(plot) -> bool:
    """plotly's default empty axes, no title: the widget's state never reached the chart."""
    return plot.locator(".gtitle").count() == 0 and plot.locator(".point").count() == 0


def _wait_for(condition, timeout_s: float, interval_s: float = 0.5):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    return condition()


def test_prompt_explorer_redraws_its_chart_in_jupyterlab(page, tmp_path):
    path = NOTEBOOKS / NOTEBOOK_01
    assert path.exists(), f"{path} is missing"
    original = path.read_bytes()
    try:
        with LabServer(NOTEBOOKS, tmp_path, env=SERVER_ENV, name="notebook01") as server:
            open_notebook(page, server, NOTEBOOK_01)
            nb = run_all_cells(page, timeout_s=900)
            screenshot(page, "notebook01-after-run-all")
            assert not error_outputs(nb), error_outputs(nb)
            assert not widget_errors(page), f"widgets failed to display: {widget_errors(page)}"

            cell = _explorer_cell(page)
            cell.scroll_into_view_if_needed()
            plot = cell.locator(".js-plotly-plot").first
            bars = _wait_for(lambda: plot.locator(".barlayer .point").count(), 60)
            if not bars and _rendered_empty(plot):
                screenshot(page, "notebook01-explorer-empty")
                pytest.fail(EMPTY_RENDER)
            assert bars > 0, "the prompt explorer's chart shows no bars in JupyterLab"
            before = plot_texts(plot)
            prompt = "My favourite programming language is"
            box = cell.locator(".widget-text input").first
            box.fill(prompt)
            box.press("Enter")
            after = _wait_for(lambda: (t := plot_texts(plot)) != before and t, 60)
            screenshot(page, "notebook01-explorer-after-typing")
            assert after and after != before, (
                f"the chart did not change after typing {prompt!r}; it still shows {before}")
            assert any("favourite" in t or "language" in t for t in after), (
                f"the chart's title should name the new prompt; it shows {after}")
    finally:
        if path.read_bytes() != original:   # JupyterLab must not have saved outputs into the repo
            path.write_bytes(original)
            pytest.fail(f"{NOTEBOOK_01} was modified by JupyterLab (restored)")


TRAINING_NOTEBOOK = [
    "import os, time\nimport labkit\n"
    "from labkit.toy import toy_model, TOY_TEXT\nfrom transformers import TrainerCallback\n"
    "model, tok = toy_model()\ndata = [{'text': t} for t in TOY_TEXT]",
    # the first chart loads plotly's renderer (megabytes of JavaScript): warm it up
    "labkit.plots.LabFigure(layout=dict(title='warm-up', height=200))",
    # slow each step down so the curve has time to grow in the browser
    "class Slow(TrainerCallback):\n    def on_step_end(self, args, state, control, **kw):\n"
    "        time.sleep(float(os.environ.get('SLOW_STEP_S', '0.5')))",
    f"result = labkit.train(model, tok, data, method='full', learning_rate=1e-3, steps={TRAIN_STEPS},\n"
    "                      batch_size=2, max_length=32, live=True, callbacks=[Slow()],\n"
    "                      label='browser test')\nresult.history.summary()",
]

def test_live_loss_curve_draws_points_while_training(page, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(src) for src in TRAINING_NOTEBOOK]
    nbformat.write(nb, root / "train_live.ipynb")

    with LabServer(root, tmp_path / "lab", env={**SERVER_ENV, "SLOW_STEP_S": "1.5"}, name="training") as server:
        open_notebook(page, server, "train_live.ipynb")
        start_run_all(page)
        plot = page.locator(".jp-CodeCell").last.locator(".js-plotly-plot").first
        plot.wait_for(timeout=300_000)
        seen, idle_since = set(), None
        deadline = time.time() + 300
        while time.time() < deadline:
            seen.add(plot_point_count(plot))
            if TRAIN_STEPS in seen:
                break
            if page.evaluate(KERNEL_IDLE):   # training is over: give the last updates 15 s to draw
                idle_since = idle_since or time.time()
                if time.time() - idle_since > 15:
                    break
            time.sleep(0.3)
        screenshot(page, "training-live-loss")
        if TRAIN_STEPS not in seen and _rendered_empty(plot):
            pytest.fail(EMPTY_RENDER)
        nb_json = wait_until_run(page, timeout_s=300)
        assert not error_outputs(nb_json), error_outputs(nb_json)
        assert TRAIN_STEPS in seen, (f"the live loss curve should end with {TRAIN_STEPS} points; "
                                     f"counts seen: {sorted(seen)}")
        assert any(0 < n < TRAIN_STEPS for n in seen), (
            f"the loss curve was not drawn while training ran, only at the end: counts seen {sorted(seen)}")
        print(f"live loss curve: point counts seen while polling: {sorted(seen)}")
        texts = " ".join(plot_texts(plot))
        assert "optimizer step" in texts and "loss" in texts, f"axis titles missing: {texts}"
        assert not widget_errors(page), widget_errors(page)
