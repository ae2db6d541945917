"""Helpers for tests/test_browser.py: a JupyterLab server on localhost and headless Chromium
driven by Playwright.

The browser is Debian's ``chromium`` (Playwright's own browser download is not available on the lab
machines); ``make test`` installs it with apt-get before pytest, and :func:`chromium_path` tries the
same when it is missing and we are root. Screenshots and the server log go to ``tests/_artifacts/``
(git-ignored), so a failing run leaves them for inspection."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "_artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage"]

# JupyterLab user settings for the test server: never autosave (the notebooks in the repository
# must stay without outputs), render every cell (no windowing), no news or update pop-ups.
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False},
}


def chromium_path() -> str:
    """``/usr/bin/chromium``, installed with apt-get if missing (as root); a clear error otherwise."""
    if not Path(CHROMIUM).exists() and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run("apt-get update -q && apt-get install -y -q chromium", shell=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, timeout=900)
    if not Path(CHROMIUM).exists():
        raise RuntimeError(
            f"{CHROMIUM} is missing: the browser tests need Debian's chromium package. Install it with\n"
            "    sudo apt-get update && sudo apt-get install -y chromium\n"
            "(`make test` does this itself when run as root).")
    return CHROMIUM


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    """``jupyter lab`` serving ``root_dir`` on its own localhost port with a random token.

    Use as a context manager; the server (and its kernels) stop on exit."""

    def __init__(self, root_dir, workdir, env: dict | None = None, name: str = "lab"):
        self.root_dir, self.workdir, self.name = Path(root_dir), Path(workdir), name
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.env = {**os.environ, **(env or {})}
        self.proc = None
        self.log_path = ARTIFACTS / f"jupyter-{name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def lab_url(self, notebook: str) -> str:
        return f"{self.url}/lab/tree/{notebook}?token={self.token}&reset"

    def __enter__(self):
        settings = self.workdir / "user-settings"
        for rel, values in LAB_SETTINGS.items():
            path = settings / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        for sub in ("runtime", "config", "workspaces"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        env = {**self.env, "JUPYTER_RUNTIME_DIR": str(self.workdir / "runtime"),
               "JUPYTER_CONFIG_DIR": str(self.workdir / "config"), "PYTHONUNBUFFERED": "1"}
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")
        jupyter = Path(sys.executable).with_name("jupyter")
        self.proc = subprocess.Popen(
            [str(jupyter), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
             "--port-retries=0", f"--IdentityProvider.token={self.token}",
             *(["--allow-root"] if os.geteuid() == 0 else []), "--LabApp.extension_manager=readonly",
             f"--ServerApp.root_dir={self.root_dir}", "--LabApp.expose_app_in_browser=True",
             f"--LabApp.user_settings_dir={settings}",
             f"--LabApp.workspaces_dir={self.workdir / 'workspaces'}",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
            cwd=self.root_dir, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=5):
                    return self
            except OSError:
                time.sleep(0.5)
        self.__exit__(None, None, None)
        raise RuntimeError(f"jupyter lab did not answer within 120 s; see {self.log_path}")

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            import psutil

            kernels = psutil.Process(self.proc.pid).children(recursive=True)  # own process groups
            try:   # a clean shutdown stops the kernels too
                req = urllib.request.Request(f"{self.url}/api/shutdown?token={self.token}", method="POST")
                urllib.request.urlopen(req, timeout=10).close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            for k in kernels:
                if k.is_running():
                    k.kill()
        if getattr(self, "_log", None):
            self._log.close()
        return False


# --- the page ---------------------------------------------------------------------------------

NOTEBOOK_JSON = "() => window.jupyterapp.shell.currentWidget.context.model.toJSON()"
KERNEL_IDLE = """() => { const w = window.jupyterapp.shell.currentWidget;
  return w.sessionContext.kernelDisplayStatus === 'idle'; }"""
KERNEL_STATE = """() => {
  const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  if (!w || !w.sessionContext || !w.content) return null;
  const cells = [...w.content.model.cells].filter(c => c.type === 'code');
  return {status: w.sessionContext.kernelDisplayStatus,
          pending: cells.filter(c => !c.executionCount).length,
          running: document.querySelectorAll('.jp-InputPrompt').length &&
                   [...document.querySelectorAll('.jp-InputPrompt')].some(p => p.textContent.includes('*'))};
}"""


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    try:
        page.screenshot(path=str(path), full_page=True)
    except Exception:  # a crashed page must not hide the real failure
        pass
    return path


def open_notebook(page, server: LabServer, notebook: str, timeout_s: float = 180):
    """Open a notebook and wait until its kernel is idle."""
    page.goto(server.lab_url(notebook), timeout=timeout_s * 1000)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=timeout_s * 1000)
    page.wait_for_function(
        "() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
        " return w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel"
        " && w.sessionContext.kernelDisplayStatus === 'idle'; }", timeout=timeout_s * 1000)


def run_all_cells(page, timeout_s: float = 600) -> dict:
    """Run every cell (Run > Run All Cells) and wait until each code cell has run and the kernel
    is idle. Returns the notebook as nbformat JSON (with its outputs) for inspection."""
    start_run_all(page)
    return wait_until_run(page, timeout_s)


def start_run_all(page):
    """Start Run All and return at once (returning the command's promise would wait for the end)."""
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")


def wait_until_run(page, timeout_s: float = 600) -> dict:
    """Wait until every code cell has run and the kernel is idle; the notebook as nbformat JSON."""
    state = None
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        state = page.evaluate(KERNEL_STATE)
        if state and state["status"] == "idle" and state["pending"] == 0 and not state["running"]:
            return page.evaluate(NOTEBOOK_JSON)
        if state and state["status"] in ("dead", "unknown"):
            break
        time.sleep(1)
    raise AssertionError(f"the notebook did not finish running within {timeout_s:.0f} s (state: {state})")


def error_outputs(nb_json: dict) -> list[str]:
    errors = []
    for i, cell in enumerate(nb_json["cells"]):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                errors.append(f"cell {i}: {out.get('ename')}: {out.get('evalue')}")
    return errors


def widget_errors(page) -> list[str]:
    """Texts JupyterLab shows when a widget's front end is missing or broken."""
    texts = page.locator(".jp-OutputArea-output").all_inner_texts()
    bad = ("Error displaying widget", "Failed to load model class", "model not found",
           "Loading widget...")
    return [t.strip()[:200] for t in texts if any(b in t for b in bad)]


def plot_texts(plot) -> list[str]:
    """The text drawn in a plotly chart (tick labels, title, legend) as the browser shows it."""
    return plot.locator("svg text").all_text_contents()


def plot_point_count(plot) -> int:
    """Markers drawn in a plotly chart's scatter traces."""
    return plot.locator(".scatterlayer path.point").count()
