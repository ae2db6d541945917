"""The method-comparison runner: metrics, the saved JSON layout, the side-by-side table."""
import json

import pytest

from labkit import compare, profile
from labkit.toy import toy_model

CHATS = [{"messages": [{"role": "user", "content": "Add one and two."},
                       {"role": "assistant", "content": "One plus two is three."}]},
         {"messages": [{"role": "user", "content": "Name a capital."},
                       {"role": "assistant", "content": "The capital of France is Paris."}]}]


def test_heldout_scores_score_the_reply_only_and_keep_each_record(reply_nll):
    model, tok = toy_model()
    sums = [reply_nll(model, tok, c["messages"]) for c in CHATS]
    scored = compare.heldout_scores(model, tok, CHATS)
    assert scored["heldout_loss"] == pytest.approx(sum(s for s, _ in sums) / sum(n for _, n in sums), rel=1e-5)
    assert [c for _, c in scored["heldout_scores"]] == [n for _, n in sums]
    assert [s for s, _ in scored["heldout_scores"]] == pytest.approx([s for s, _ in sums], rel=1e-5)
    json.dumps(scored)   # saved with the results


def fake_scores(losses, tokens=4):
    """Per-record held-out scores whose records have the given mean losses."""
    return {"heldout_loss": sum(losses) / len(losses), "heldout_scores": [[x * tokens, tokens] for x in losses]}


def test_quality_ratio_noise_follows_the_spread_of_the_records():
    """The ratio's band is wide when records disagree about LoRA against full fine-tuning, and
    narrow when every record tells the same story."""
    base = [2.0] * 20
    full = [1.0] * 20
    steady = [1.1] * 20                               # every record: 90% of full's gain
    mixed = [1.6, 0.6] * 10                           # the same 90% on average, record by record 40% or 140%
    results = {"base": fake_scores(base), "full": fake_scores(full), "lora": fake_scores(steady), "dora": fake_scores(mixed)}
    assert compare.quality_ratio_noise(results, "lora") == pytest.approx(0.0, abs=1e-9)
    wide = compare.quality_ratio_noise(results, "dora")
    assert 0.2 < wide < 0.6   # two bootstrap sds of a mean of 20 records spread by ±0.5: about 2 * 0.5 / sqrt(20)
    assert compare.quality_ratio_noise(results, "dora") == wide            # seeded: the same band each time
    assert compare.quality_ratio_noise({**results, "dora": fake("dora", 1.1)}, "dora") == float("inf")
    assert compare.loss_difference_noise(results, "dora", "lora") == pytest.approx(
        __import__("labkit").claims.paired_noise(mixed, steady))


def test_config_is_the_same_for_every_method_but_the_learning_rate():
    p = profile("smoke")
    cfgs = {m: compare.comparison_config(m, p).to_dict() for m in compare.METHODS}
    for m, c in cfgs.items():
        assert {k: v for k, v in c.items() if k not in ("method", "learning_rate")} == \
               {k: v for k, v in cfgs["lora"].items() if k not in ("method", "learning_rate")}
    with pytest.raises(ValueError, match="method"):
        compare.comparison_config("adapters", p)


def fake(method, loss, acc=1.0, trainable=10, profile_name="smoke"):
    return {"method": method, "profile": profile_name, "heldout_loss": loss, "heldout_scores": [[loss, 1]], "probe_accuracy": acc,
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


def test_a_saved_run_without_per_record_scores_is_scored_again(tmp_path, monkeypatch, capsys):
    """Runs saved by an older labkit have only the mean loss: the band of notebook 08's ratio and
    10's DoRA-against-LoRA difference needs every record's loss, so they are run again."""
    monkeypatch.chdir(tmp_path)
    old = {k: v for k, v in fake("lora", 1.2).items() if k != "heldout_scores"}
    compare._save({**fake("base", 2.0)})
    compare._save({**old, "stopped": "finished"})
    trained = []
    monkeypatch.setattr(compare, "run_method", lambda m, p, **kw: trained.append(m) or fake(m, 1.1))
    compare.ensure_results(["lora"], profile("smoke"))
    assert trained == ["lora"] and "no per-record held-out scores" in capsys.readouterr().out


def test_difference_noise_takes_the_larger_of_records_and_seed():
    results = {"lora": fake_scores([1.0, 1.2, 0.8, 1.0]), "dora": fake_scores([0.99, 1.19, 0.79, 0.99])}
    only_records = compare.difference_noise(results, "dora", "lora")
    assert only_records["seed"] == 0.0 and only_records["noise"] == only_records["records"] == pytest.approx(0.0, abs=1e-9)
    with_seed = compare.difference_noise(results, "dora", "lora", rerun={"heldout_loss": 1.05})
    assert with_seed["seed gap"] == pytest.approx(0.05) and with_seed["noise"] == with_seed["seed"] == pytest.approx(0.1)


def test_against_best_reads_each_sweep_run_with_its_noise():
    runs = [{"label": "r=8", **fake_scores([1.0, 1.2, 0.8, 1.0])},
            {"label": "r=32", **fake_scores([1.2, 1.4, 1.0, 1.2])},          # 0.2 above on every record
            {"label": "attention", **fake_scores([1.9, 0.3, 1.7, 0.5])}]     # 0.1 above on average, records disagree
    t = compare.against_best(runs)
    assert list(t["reads"]) == ["the lowest", "worse", "within noise of the lowest"]
    assert t.loc["r=32", "above the best"] == pytest.approx(0.2) and t.loc["r=32", "noise"] == pytest.approx(0.0, abs=1e-9)
