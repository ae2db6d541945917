"""The README's first command: `make lab HEADLESS=1` serves the notebooks, landing on 00."""
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from browser_helpers import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.browser
def test_make_lab_serves_the_start_notebook(tmp_path):
    port = free_port()
    log = tmp_path / "lab.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["make", "lab", "HEADLESS=1", f"PORT={port}"], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")})
    try:
        token = None
        deadline = time.time() + 240
        while time.time() < deadline and token is None:
            time.sleep(1)
            assert proc.poll() is None, log.read_text()[-3000:]
            found = re.search(rf"127\.0\.0\.1:{port}/lab\?token=(\w+)", log.read_text())
            token = found and found.group(1)
        assert token, log.read_text()[-3000:]
        url = f"http://127.0.0.1:{port}/api/contents/00_start_here.ipynb?content=0&token={token}"
        with urllib.request.urlopen(url, timeout=30) as r:
            assert r.status == 200 and b'"00_start_here.ipynb"' in r.read()
        assert "00_start_here.ipynb" in log.read_text()  # the file JupyterLab opens first
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
