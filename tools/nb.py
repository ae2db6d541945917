"""Write a lesson notebook from a list of cells, with the lab's standard first cells.

    from tools.nb import write_notebook
    write_notebook("notebooks/01_pretrained_behavior.ipynb", "01 · What a pretrained model does", [
        ("md", "Some prose"),
        ("code", "import labkit"),
    ])

The notebook starts with the Colab setup cell (labkit/colab.py) and a title cell with the
"Open in Colab" link; outputs are left empty (the tests execute every notebook)."""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from labkit.colab import SETUP_CELL, badge  # noqa: E402


def write_notebook(path, title: str, cells: list[tuple[str, str]], intro: str = "") -> Path:
    path = Path(path)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells.append(nbformat.v4.new_code_cell(SETUP_CELL))
    nb.cells.append(nbformat.v4.new_markdown_cell(f"{badge(path.name)}\n\n# {title}\n\n{intro}".rstrip()))
    for kind, text in cells:
        text = text.strip("\n")
        if kind == "md":
            nb.cells.append(nbformat.v4.new_markdown_cell(text))
        elif kind == "code":
            nb.cells.append(nbformat.v4.new_code_cell(text))
        else:
            raise ValueError(f"cell kind must be 'md' or 'code', got {kind!r}")
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"
    nbformat.validate(nb)
    path.write_text(nbformat.writes(nb))
    return path
