"""Charts that render in every front end (labkit/plots.py): what a notebook output holds, and that
it is redrawn when the figure changes, in a cell's output and inside a box of controls."""
import json

import ipywidgets as W
import pytest

from labkit import plots
from labkit.plots import LabFigure, Panel, figure_bundle

PLOTLY = "application/vnd.plotly.v1+json"
WIDGET = "application/vnd.jupyter.widget-view+json"


def shown_y(out) -> list:
    """The first trace's y values as an Output widget shows them to the front end."""
    (output,) = out.outputs
    return list(output["data"][PLOTLY]["data"][0]["y"])


def line():
    fig = LabFigure(layout=dict(title="a line", height=300))
    fig.add_scatter(x=[1, 2], y=[3, 4])
    return fig


def test_a_figure_carries_plotlys_json_and_a_self_drawing_html_copy():
    bundle = figure_bundle(line())
    assert bundle[PLOTLY]["data"][0]["y"] == [3, 4]            # JupyterLab, VS Code
    html = bundle["text/html"]                                  # nbconvert, Colab, any browser
    assert 'class="labkit-figure"' in html and "Plotly.newPlot" in html and "height:300px" in html
    assert '"y":[3,4]' in html.replace(" ", "")
    assert "<figure: a line>" == bundle["text/plain"]


def test_in_colab_every_chart_loads_plotlyjs_itself(monkeypatch):
    monkeypatch.setattr(plots, "in_colab", lambda: True)
    bundle = figure_bundle(line())
    assert PLOTLY not in bundle                  # Colab does not render plotly's mime type
    assert '<script src="https://cdn.plot.ly/' in bundle["text/html"]


def test_a_figure_in_a_panel_is_redrawn_when_it_changes():
    fig = line()
    slider = W.IntSlider()
    panel = Panel([slider, fig])
    out = panel.children[1]
    assert isinstance(out, W.Output) and shown_y(out) == [3, 4]
    with fig.batch_update():
        fig.data[0].y = [5, 6]
        with fig.batch_update():            # nested: one redraw, at the end
            fig.layout.title = "moved"
    assert shown_y(out) == [5, 6]
    assert out.outputs[0]["data"][PLOTLY]["layout"]["title"]["text"] == "moved"
    fig.data[0].y = [7, 8]                  # outside batch_update: drawn on refresh()
    assert shown_y(out) == [5, 6]
    fig.refresh()
    assert shown_y(out) == [7, 8]


def test_a_figure_shown_in_a_cell_is_updated_through_its_display_handle(monkeypatch):
    import IPython.display

    updates = []

    class Handle:
        def update(self, bundle, raw=False):
            updates.append((bundle, raw))

    monkeypatch.setattr(IPython.display, "display", lambda *a, **k: Handle())
    fig = line()
    fig.show()
    with fig.batch_update():
        fig.data[0].y = [9, 9]
    (text_only, raw1), (bundle, raw2) = updates    # see LabFigure.refresh: JupyterLab needs the text step
    assert list(text_only) == ["text/plain"]
    assert raw1 and raw2 and bundle[PLOTLY]["data"][0]["y"] == [9, 9]


def test_a_panel_output_has_the_widget_and_a_static_copy_of_its_charts():
    panel = Panel([W.IntSlider(), line()])
    bundle = panel._repr_mimebundle_()
    assert bundle[WIDGET]["model_id"] == panel.model_id
    assert bundle["text/html"].count('class="labkit-figure"') == 1


def test_a_panel_works_with_ipywidgets_7_as_colab_ships_it(monkeypatch):
    """ipywidgets 7 widgets have no _repr_mimebundle_ (they display themselves)."""
    monkeypatch.delattr(W.Widget, "_repr_mimebundle_")
    assert not hasattr(W.VBox, "_repr_mimebundle_")
    panel = Panel([W.IntSlider(), line()])
    bundle = panel._repr_mimebundle_()
    assert bundle[WIDGET] == {"version_major": 2, "version_minor": 0, "model_id": panel.model_id}
    assert "labkit-figure" in bundle["text/html"]


def test_plotlyjs_goes_into_a_kernel_page_once(monkeypatch):
    import IPython.display

    shown = []
    monkeypatch.setattr(plots, "_in_kernel", lambda: True)
    monkeypatch.setattr(plots, "in_colab", lambda: False)
    monkeypatch.setitem(plots._PLOTLYJS_SHOWN, "done", False)
    monkeypatch.setattr(IPython.display, "display", lambda obj, **k: shown.append(obj))
    plots.ensure_plotlyjs()
    plots.ensure_plotlyjs()
    assert len(shown) == 1 and "Plotly" in shown[0].data and len(shown[0].data) > 1_000_000


def test_no_labkit_chart_depends_on_plotlys_figurewidget():
    """FigureWidget needs anywidget's front end: blank in Colab without its custom widget manager
    and in every static rendering (issue #16). Charts go through plots.LabFigure instead."""
    from pathlib import Path

    offenders = [p.name for p in (Path(plots.__file__).parent).glob("*.py") if "FigureWidget(" in p.read_text()]
    assert offenders == []


def test_lab_layout_sets_the_frame_and_passes_the_rest_on():
    fig = plots.lab_layout(LabFigure(), 300, top=80, legend_below=-0.25, title="t", xaxis_title="x (s)")
    layout = json.loads(fig.to_json())["layout"]
    assert layout["margin"] == {"l": 60, "r": 20, "t": 80, "b": 50} and layout["height"] == 300
    assert layout["legend"] == {"orientation": "h", "y": -0.25}
    assert layout["title"]["text"] == "t" and layout["xaxis"]["title"]["text"] == "x (s)"


def test_only_lab_layout_sets_margins():
    """One frame for every chart: modules call plots.lab_layout instead of writing margins."""
    from pathlib import Path

    offenders = [p.name for p in (Path(plots.__file__).parent).glob("*.py")
                 if p.name != "plots.py" and "margin=" in p.read_text()]
    assert offenders == []


def test_top_k_bars_keep_small_probabilities_visible():
    import pandas as pd

    table = pd.DataFrame({"token": [" a", " b"], "probability": [0.04, 0.03]})
    fig = plots.top_k_bar(table, figure=LabFigure())
    low, high = fig.layout.yaxis.range
    assert low == 0 and high == pytest.approx(0.046)
    assert json.loads(fig.to_json())["data"][0]["y"] == [0.04, 0.03]


def test_training_progress_is_a_line_of_html_redrawn_in_place(monkeypatch):
    """Not a tqdm widget: a widget bar is blank in static HTML and shows as 'HBox(children=...)'."""
    import IPython.display

    from labkit import training

    shown = []

    class Handle:
        def update(self, obj):
            shown.append(obj.data)

    monkeypatch.setattr(training, "in_notebook", lambda: True)
    monkeypatch.setattr(IPython.display, "display", lambda obj, **k: shown.append(obj.data) or Handle())
    bar = training.Progress(10, "code tuning")
    bar.update(3, loss=2.5)
    assert "0/10 steps" in shown[0] and "<progress" in shown[0]
    assert "3/10 steps" in shown[-1] and "s left" in shown[-1] and "loss 2.500" in shown[-1]
