"""benchmarks/build_site.py, the course as static pages: a notebook is executed, exported with a banner
(machine, profile, date, commit) and opened in Chromium with no kernel and no network, where every
chart must be drawn with data. The real build (every notebook, cpu profile) is `make site`, outside
the suite's time budget; here two tiny notebooks that draw labkit charts go through the same code."""
import importlib
import sys
from pathlib import Path

import nbformat
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"

CHART = """import labkit.plots as P
fig = P.LabFigure()
fig.add_scatter(y={y}, name="loss")
P.lab_layout(fig)
fig.update_layout(title="{title}")
fig"""


def notebook(folder: Path, name: str, title: str, charts=(("[3.0, 2.0, 1.5]", "A chart with data"),)) -> Path:
    """A notebook with prose, a printed result and a labkit chart per (y values, title) of ``charts``."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {title}\n\nSome prose."),
                nbformat.v4.new_code_cell("print('printed result', 6 * 7)")]
    nb.cells += [nbformat.v4.new_code_cell(CHART.format(y=y, title=t)) for y, t in charts]
    path = folder / name
    nbformat.write(nb, path)
    return path


@pytest.fixture
def build_site(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCH))
    for name in ("common", "build_site"):
        sys.modules.pop(name, None)
    module = importlib.import_module("build_site")
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    monkeypatch.setattr(module, "NOTEBOOKS", notebooks)
    monkeypatch.setenv("LABKIT_PROFILE", "smoke")   # build() sets these: monkeypatch puts them back
    monkeypatch.setenv("LABKIT_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return module, notebooks


@pytest.mark.notebook
@pytest.mark.browser
def test_site_pages_show_banner_results_and_charts_with_data(build_site, tmp_path):
    module, notebooks = build_site
    notebook(notebooks, "00_charts.ipynb", "Two charts",
             charts=(("[3.0, 2.0, 1.5]", "A chart with data"), ("[]", "A chart without data")))
    out = tmp_path / "site"
    pages, problems = module.build("smoke", out, limit_s=300)

    assert [(p["status"], p["charts"]) for p in pages] == [("ok", 2)]
    page = (out / "00_charts.html").read_text()
    assert f'id="{module.BANNER_ID}"' in page
    for fact in ("machine:", "profile:</b> smoke", "run:", "labkit commit:", "printed result 42", "Some prose."):
        assert fact in page, fact
    # Chromium finds both charts drawn: the one with data passes, the empty one is reported
    assert problems == ["00_charts.html: A chart without data: no data"]
    assert pages[0]["charts_check"] == "1 problem(s)"
    index = (out / "index.html").read_text()
    assert 'href="00_charts.html"' in index and "Two charts" in index and f"{pages[0]['seconds']:.1f}" in index


@pytest.mark.notebook
def test_a_failing_notebook_keeps_its_page_and_fails_the_build(build_site, tmp_path):
    module, notebooks = build_site
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell("# Broken"), nbformat.v4.new_code_cell("print('before')"),
                nbformat.v4.new_code_cell("1 / 0"), nbformat.v4.new_code_cell("print('never')")]
    nbformat.write(nb, notebooks / "00_broken.ipynb")
    assert module.main(["--profile", "smoke", "--out", str(tmp_path / "site"), "--no-check"]) == 1
    page = (tmp_path / "site" / "00_broken.html").read_text()
    assert "error in cell 2: ZeroDivisionError" in page and "before" in page


def test_pages_from_already_executed_notebooks(build_site, tmp_path):
    """--executed DIR: no kernel; the run times come from DIR/times.json; a notebook missing there is a problem."""
    import json

    module, notebooks = build_site
    notebook(notebooks, "00_good.ipynb", "Executed elsewhere")
    notebook(notebooks, "01_other.ipynb", "Not executed")
    executed = tmp_path / "executed"
    executed.mkdir()
    nb = nbformat.read(notebooks / "00_good.ipynb", as_version=4)
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="from the earlier run\n")]
    nbformat.write(nb, executed / "00_good.ipynb")
    (executed / "times.json").write_text(json.dumps({"00_good": 12.5}))
    pages, problems = module.build("cpu", tmp_path / "site", executed=executed, check=False)
    assert [p["seconds"] for p in pages] == [12.5]
    assert problems == [f"01_other.ipynb: not in {executed}"]
    page = (tmp_path / "site" / "00_good.html").read_text()
    assert "from the earlier run" in page and "profile:</b> cpu" in page and "executed by " in page


def test_only_names_a_missing_notebook(build_site):
    module, _ = build_site
    with pytest.raises(SystemExit, match="no notebook numbered 42"):
        module.notebook_paths(["42"])
