"""labkit.Experiment: a notebook's knobs in the same style as the typed configs."""
import json

import pytest

import labkit
from labkit.experiment import Experiment, ExperimentConfig
from labkit.rlhf import RLHFConfig


def test_reads_as_dict_and_attributes_and_round_trips(tmp_path):
    e = Experiment(seed=3, steps=8, rates=(1e-5, 1e-3), sizes={"n": 2})
    assert e["steps"] == e.steps == 8
    assert e.rates == [1e-5, 1e-3]                      # as it will read back from the file
    assert dict(e) == {"seed": 3, "steps": 8, "rates": [1e-5, 1e-3], "sizes": {"n": 2}}
    path = e.save(tmp_path / "experiment.json")
    assert json.loads(path.read_text()) == e.to_dict()
    assert Experiment.load(path) == e


def test_needs_a_seed_and_json_values():
    with pytest.raises(ValueError, match="needs a seed"):
        Experiment(steps=8)
    with pytest.raises(ValueError, match="seed=-1"):
        Experiment(seed=-1)
    with pytest.raises(ValueError, match=r"rates\[1\]=nan"):
        Experiment(seed=0, rates=[1e-5, float("nan")])
    with pytest.raises(ValueError, match=r"model=.*is not JSON"):
        Experiment(seed=0, model=object())


def test_unknown_knob_is_named():
    with pytest.raises(AttributeError, match="no 'step'.*'steps'"):
        Experiment(seed=0, steps=2).step


def test_a_file_that_is_not_an_experiment_is_named(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="x.json: not a labkit.Experiment JSON file"):
        Experiment.load(bad)
    bad.write_text('{"steps": 2}')
    with pytest.raises(ValueError, match="x.json: Experiment needs a seed"):
        Experiment.load(bad)


def test_one_style_for_every_config():
    assert labkit.Experiment is Experiment
    assert issubclass(labkit.TrainConfig, ExperimentConfig) and issubclass(RLHFConfig, ExperimentConfig)
    for cfg in (labkit.TrainConfig(), RLHFConfig(), Experiment(seed=0)):
        assert "seed" in cfg.to_dict() and json.dumps(cfg.to_dict())


def test_notebooks_declare_their_knobs_in_one_style():
    """No notebook keeps its knobs in a bare dict: EXPERIMENT/CONFIG is a labkit.Experiment."""
    import re
    from pathlib import Path

    bare = re.compile(r"^(EXPERIMENT|CONFIG)\s*=\s*(dict\(|\{)", re.M)
    offenders = []
    for nb in sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            if cell["cell_type"] == "code" and bare.search("".join(cell["source"])):
                offenders.append(nb.name)
    assert not offenders, f"knobs in a bare dict (use labkit.Experiment): {offenders}"


def test_a_knob_set_later_is_checked_like_one_given_at_creation():
    import math

    import pytest

    from labkit import Experiment

    e = Experiment(seed=0, small_n=20)
    e["large_n"] = 10 * e["small_n"]
    e.update(rates=(1e-4, 1e-3))
    assert e == {"seed": 0, "small_n": 20, "large_n": 200, "rates": [1e-4, 1e-3]}
    with pytest.raises(ValueError, match=r"rate=nan"):
        e["rate"] = math.nan
    with pytest.raises(ValueError, match=r"model=.*not JSON"):
        e.update(model=object())
    with pytest.raises(ValueError, match=r"seed=-1"):
        e["seed"] = -1
    assert "rate" not in e and "model" not in e and e["seed"] == 0
