"""The method-comparison runner: metrics, the saved JSON layout, the side-by-side table."""
import json

import pytest

from labkit import compare, profile
from labkit.toy import toy_model

CHATS = [{"messages": [{"role": "user", "content": "Add one and two."},
                       {"role": "assistant", "content": "One plus two is three."}]},
         {"messages": [{"role": "user", "content": "Name a capital."},
                       {"role": "assistant", "content": "The capital of France is Paris."}]}]


def test_heldout_loss_scores_the_reply_only(reply_nll):
    model, tok = toy_model()
    sums = [reply_nll(model, tok, c["messages"]) for c in CHATS]
    expected = sum(s for s, _ in sums) / sum(n for _, n in sums)
    assert compare.heldout_loss(model, tok, CHATS) == pytest.approx(expected, rel=1e-5)
    # cut inside the first reply: only the reply tokens within max_length are scored
    cut = len(tok.apply_chat_template(CHATS[0]["messages"][:-1], add_generation_prompt=True)["input_ids"]) + 3
    nll, n = reply_nll(model, tok, CHATS[0]["messages"], max_length=cut)
    assert n == 3 and compare.heldout_loss(model, tok, CHATS[:1], max_length=cut) == pytest.approx(nll / n, rel=1e-5)
    with pytest.raises(ValueError, match="reply tokens"):
        compare.heldout_loss(model, tok, CHATS, max_length=3)


def test_config_is_the_same_for_every_method_but_the_learning_rate():
    p = profile("smoke")
    cfgs = {m: compare.comparison_config(m, p).to_dict() for m in compare.METHODS}
    for m, c in cfgs.items():
        assert {k: v for k, v in c.items() if k not in ("method", "learning_rate")} == \
               {k: v for k, v in cfgs["lora"].items() if k not in ("method", "learning_rate")}
    with pytest.raises(ValueError, match="method"):
        compare.comparison_config("adapters", p)


def fake(method, loss, acc=1.0, trainable=10, profile_name="smoke"):
    return {"method": method, "profile": profile_name, "heldout_loss": loss, "probe_accuracy": acc,
            "trainable_params": trainable, "total_params": 1000, "peak_memory_mb": 1.0,
            "step_time_s": 1.0, "disk_mb": 1.0}


def test_results_table_quality_ratio_and_forgetting():
    results = {"base": fake("base", 2.0), "full": fake("full", 1.0, acc=0.9, trainable=1000),
               "lora": fake("lora", 1.05, acc=1.0)}
    t = compare.results_table(results)
    assert t.loc["lora", "quality_ratio"] == pytest.approx(0.95)
    assert t.loc["full", "quality_ratio"] == pytest.approx(1.0)
    assert t.loc["full", "forgetting_points"] == pytest.approx(10.0)
    assert t.loc["lora", "trainable_percent"] == pytest.approx(1.0)
    assert list(t.index) == ["base", "full", "lora"]


def test_results_are_saved_and_loaded_per_profile(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    compare._save(fake("lora", 1.2))
    compare._save({**fake("full", 1.1, profile_name="cpu")})
    saved = json.loads((tmp_path / "outputs" / "method_comparison" / "lora.json").read_text())
    assert saved["heldout_loss"] == 1.2
    assert set(compare.load_results(profile("smoke"))) == {"lora"}
    assert set(compare.load_results(profile("cpu"))) == {"full"}


def test_magnitude_direction_correlation_and_figure():
    rows = [{"method": m, "step": s, "layer": f"l{i}", "delta_m": dm, "delta_d": dd}
            for m, sign in (("full", -1), ("lora", 1)) for s in (1, 2) for i, (dd, dm) in
            enumerate([(0.1, 1 + sign * 0.1), (0.2, 1 + sign * 0.2), (0.3, 1 + sign * 0.3)])]
    import pandas as pd

    corr = compare.magnitude_direction_correlation(pd.DataFrame(rows))
    assert corr["full"] < 0 < corr["lora"]
    fig = compare.magnitude_direction_figure({"full": {"magnitude_direction": rows[:6]},
                                              "lora": {"magnitude_direction": rows[6:]}})
    assert len(fig.data) == 2 and "full" in fig.layout.annotations[0].text


def test_weight_snapshots_record_change_during_training():
    from labkit import train
    from labkit.lora import WeightSnapshots

    model, tok = toy_model()
    snaps = WeightSnapshots("q_proj", every=1, method="lora")
    train(model, tok, CHATS * 4, method="lora", steps=2, batch_size=2, max_length=32, learning_rate=1e-2,
          mixed_precision="no", live=False, callbacks=[snaps])
    assert {r["step"] for r in snaps.rows} == {1, 2} and len(snaps.rows) == 4   # 2 layers x 2 steps
    assert all(r["delta_d"] >= 0 and r["delta_m"] >= 0 for r in snaps.rows)
    assert max(r["delta_d"] for r in snaps.rows) > 0


def test_a_saved_run_that_did_not_finish_is_trained_again(tmp_path, monkeypatch, capsys):
    """A saved result whose run diverged (its weights restored: it scores the base model) or was
    interrupted must not stand in a later notebook's table: 09 and 10 showed a QLoRA and a DoRA
    'trained' on the cpu profile that had stopped at step 2."""
    monkeypatch.chdir(tmp_path)
    compare._save({**fake("base", 2.0)})
    compare._save({**fake("lora", 1.2), "stopped": "finished"})
    compare._save({**fake("dora", 2.0), "stopped": "diverged at step 2: the loss rose from 0.72 to 2.94"})
    compare._save({**fake("qlora", 1.3), "stopped": "early stopping at step 4: validation loss rose"})
    trained = []
    monkeypatch.setattr(compare, "run_method", lambda m, p, **kw: trained.append(m) or fake(m, 1.1))
    results = compare.ensure_results(["lora", "dora", "qlora"], profile("smoke"))
    assert trained == ["dora"]
    assert results["dora"]["heldout_loss"] == 1.1 and results["lora"]["heldout_loss"] == 1.2
    assert "dora: the saved run did not finish (diverged at step 2" in capsys.readouterr().out
