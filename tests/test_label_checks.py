"""The label checks that every notebook's static page goes through (tests/static_html.py,
``label_defects``), held against issue #22's list of mislabelled charts: each defect is refused with
a line naming the chart, and correct labels pass."""
from static_html import label_defects


def chart(title, axes=(), series=()):
    return {"title": title, "id": "", "axes": list(axes), "series": list(series)}


def axis(title, name="yaxis", rng=None, auto=True):
    return {"axis": name, "title": title, "range": rng, "autorange": auto}


def trace(name="", kind="scatter", ys=(1.0, 2.0), xs=("1", "2"), colors=None, visible=True):
    return {"name": name, "type": kind, "points": len(ys), "visible": visible, "colors": colors,
            "ys": list(ys), "xs": list(xs)}


def test_correct_labels_pass():
    plots = [chart("Training loss", [axis("loss (nats/token)")], [trace("train"), trace("validation")]),
             chart("Reward model: pairwise loss", [axis("pairwise loss -log σ(r_chosen − r_rejected)")], [trace("loss")]),
             chart("Next-token probabilities", [axis("probability", rng=[0, 0.04], auto=True)],
                   [trace(kind="bar", ys=(0.01, 0.03))]),
             chart("The reward model prefers B: A 0.10 vs B 0.90", [],
                   [trace(kind="bar", ys=(0.1, 0.9), xs=("A", "B"), colors=["red", "green"])])]
    assert label_defects(plots) == []


def test_each_defect_of_issue_22_is_named():
    cases = {
        "shows a missing value": chart("Most-changed matrix: layer 0 nan"),
        "has no points": chart("Live loss", [axis("loss")], [trace("train"), trace("validation", ys=(), xs=())]),
        "pairwise, not per token": chart("DPO training loss", [axis("cross-entropy, nats/token")], [trace()]),
        "bars invisible": chart("Next-token probabilities", [axis("probability", rng=[0, 1], auto=False)],
                                [trace(kind="bar", ys=(0.01, 0.02))]),
        "is the shorter one": chart("The reward model prefers A: A 0.10 vs B 0.90", [],
                                    [trace(kind="bar", ys=(0.1, 0.9), xs=("A", "B"), colors=["g", "r"])]),
        "same colour": chart("The reward model prefers B: A 0.10 vs B 0.90", [],
                             [trace(kind="bar", ys=(0.1, 0.9), xs=("A", "B"), colors=["g", "g"])]),
    }
    for expected, plot in cases.items():
        found = label_defects([plot])
        assert len(found) == 1 and expected in found[0], (expected, found)
        assert found[0].startswith(plot["title"])


def test_a_hidden_empty_trace_is_not_a_defect():
    """plotly's 'legendonly' traces are the learner's choice, not a broken chart."""
    assert label_defects([chart("Loss", [axis("loss")], [trace("train"), trace("validation", ys=(), visible="legendonly")])]) == []


def test_a_chart_with_no_data_at_all_is_left_to_plots_without_data():
    """An empty chart is one problem ("no data", from plots_without_data), not one more per legend entry."""
    assert label_defects([chart("Loss", [axis("loss")], [trace("train", ys=(), xs=())])]) == []
