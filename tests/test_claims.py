"""The claims ledger (labkit.claims): entries written, replaced and gathered; verdicts computed
from the numbers and the noise; the command line prints them."""
import json
import math

import pytest

from labkit import claims
from labkit.__main__ import main


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_OUTPUTS", str(tmp_path))
    monkeypatch.setenv("LABKIT_PROFILE", "smoke")
    return tmp_path


def test_an_entry_is_written_replaced_by_its_claim_and_gathered_in_notebook_order(outputs, monkeypatch):
    from labkit import reproducibility

    monkeypatch.setattr(reproducibility, "LAST_SEED", None)   # nothing seeded yet in this "notebook"
    claims.record("02_weights", "c1", says="s", measured={"p": 0.25, "n": 3}, verdict=True)
    claims.record("02_weights", "c2", says="s", measured={"p": 0.5}, verdict="within noise")
    reproducibility.set_seed(7, deterministic=False)
    claims.record("02_weights", "c1", says="s", measured={"p": 0.125}, verdict=False,   # rerun: replaced
                  note="a | in a note")
    claims.record("00_start", "c0", says="s", measured={"top": " Paris"}, verdict=True, seed="0 (and 1)")
    (outputs / "rlhf").mkdir()   # notebook 06 keeps its own comparison there: not a ledger
    (outputs / "rlhf" / "results.json").write_text(json.dumps({"comparison": []}))
    on_disk = json.loads((outputs / "02_weights" / "results.json").read_text())
    assert [e["claim"] for e in on_disk] == ["c2", "c1"]
    got = claims.gather()
    assert [(e["notebook"], e["claim"], e["verdict"]) for e in got] == [
        ("00_start", "c0", "holds"), ("02_weights", "c2", "within noise (not shown at this scale)"),
        ("02_weights", "c1", "does not hold")]
    assert got[2]["measured"] == {"p": 0.125} and got[2]["profile"] == "smoke" and got[2]["machine"]
    assert list(claims.table()["verdict"]) == [e["verdict"] for e in got]
    assert got[2]["seed"] == 7 and got[1]["seed"] is None and got[0]["seed"] == "0 (and 1)"   # given, not the last
    assert "| 02 | c1 | p 0.125 | does not hold | smoke | 7 | a \\| in a note |" in claims.markdown()
    assert "| 02 | c2 | p 0.5 | within noise (not shown at this scale) | smoke | none |  |" in claims.markdown()


def test_a_new_run_replaces_the_ledger_of_the_last(outputs, monkeypatch):
    """Entries of an earlier run of the notebook (another process) go when this run records its
    first claim: a claim the notebook no longer makes does not stay beside the new numbers."""
    claims.record("11_process", "clean beats 30% noisy", says="s", measured={"d": 0.05}, verdict="within noise")
    claims.record("11_process", "clean beats 70% noisy", says="s", measured={"d": 0.3}, verdict=True)
    assert len(claims.gather()) == 2                                   # one run: both kept
    monkeypatch.setattr(claims, "RUN", "a later kernel")
    claims.record("11_process", "clean beats 70% noisy", says="s", measured={"d": 0.35}, verdict=True)
    assert [(e["claim"], e["measured"]) for e in claims.gather()] == [("clean beats 70% noisy", {"d": 0.35})]


def test_numpy_and_torch_numbers_are_stored_as_floats_and_bad_input_is_named(outputs):
    import numpy as np
    import torch

    e = claims.record("x", "c", says="s", measured={"a": np.float32(0.5), "b": torch.tensor(2.0), "ok": True},
                      verdict=True)
    assert e["measured"] == {"a": 0.5, "b": 2.0, "ok": "yes"}
    with pytest.raises(ValueError, match="verdict='maybe'"):
        claims.record("x", "c", says="s", measured={"a": 1}, verdict="maybe")
    with pytest.raises(ValueError, match=r"measured\['a'\]: a number or a short text, got list"):
        claims.record("x", "c", says="s", measured={"a": [1, 2]}, verdict=True)
    with pytest.raises(ValueError, match="measured: give the numbers"):
        claims.record("x", "c", says="s", measured={}, verdict=True)


def test_a_corrupt_ledger_is_named(outputs):
    (outputs / "03_x").mkdir()
    (outputs / "03_x" / "results.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"03_x/results.json: not a claims ledger"):
        claims.gather()


def test_verdicts_follow_the_effect_and_its_noise():
    assert claims.verdict(0.3, 0.1) is True
    assert claims.verdict(-0.3, 0.1) is False
    assert claims.verdict(0.05, 0.1) == "within noise"
    # 12% -> 100% on 8 pairs is real; 50% -> 62.5% on 8 pairs is not
    assert claims.verdict(1.0 - 0.125, claims.proportion_noise(0.56, 8)) is True
    assert claims.verdict(0.625 - 0.5, claims.proportion_noise(0.56, 8)) == "within noise"
    assert math.isclose(claims.paired_noise([1, 2, 3, 4], [0, 2, 2, 4]), 2 * (1 / 3) ** 0.5 / 2)  # diffs 1 0 1 0
    assert claims.paired_noise([1], [0]) == math.inf


def test_the_command_line_prints_the_ledger(outputs, capsys):
    assert main(["claims"]) == 1 and "run the notebooks first" in capsys.readouterr().out
    claims.record("03_lr", "too large a rate diverges", says="s", measured={"rates": 5}, verdict=True)
    assert main(["claims", "--outputs", str(outputs)]) == 0
    out = capsys.readouterr().out
    assert "03  holds" in out and "too large a rate diverges" in out and "measured: rates 5" in out
    assert "1 holds, 0 does not hold, 0 within noise" in out
