"""The decision helper, the held-out reply loss and the grid runner."""
import pytest

from labkit import calculator, lora, probes, process
from labkit.toy import toy_model


def test_recommend_follows_the_rules():
    t4, rtx, a100 = (calculator.GPUS[calculator.gpu_label(g)] for g in ("T4", "RTX 4090", "A100-80"))
    assert process.recommend(rtx, "smollm2-135m", "highest", 1).method == "full"    # fits, quality first
    assert process.recommend(rtx, "smollm2-135m", "highest", 10).method == "lora"   # many variants
    assert process.recommend(rtx, "llama-2-7b", "good enough", 1).method == "lora"
    assert process.recommend(t4, "llama-2-7b", "good enough", 1).method == "qlora"  # a 16-bit 7B base is too big
    assert process.recommend(t4, "llama-2-13b", "good enough", 1).method == "qlora"
    none = process.recommend(t4, "llama-2-70b", "good enough", 1)
    assert none.method is None and "nothing fits" in none.text()
    rec = process.recommend(a100, "llama-2-7b", "good enough", 5)
    assert any("5 variants" in r for r in rec.reasons) and set(rec.estimates) == {"full", "lora", "qlora"}
    assert "GiB" in rec.reasons[1] and "GiB" in rec.reasons[2] and " GB" not in rec.text()
    with pytest.raises(ValueError, match="quality"):
        process.recommend(16, "llama-2-7b", "perfect")
    with pytest.raises(ValueError, match="variants"):
        process.recommend(16, "llama-2-7b", variants=0)
    with pytest.raises(ValueError, match="model"):
        process.recommend(16, "llama-9-7b")


def test_recommend_uses_the_real_architecture():
    """A named model gets its published shape (SmolLM2-135M: 30 layers x 576, not the 9 x 1088 a
    parameter count suggests), so the adapter it prices is the one PEFT builds; a bare count says
    that its shape was assumed."""
    arch = lora.ARCHITECTURES["smollm2-135m"]
    rec = process.recommend(24, "SmolLM2-135M-Instruct", "good enough", 3)
    assert "30 layers x 576 hidden" in rec.reasons[0]
    trainable = lora.lora_parameter_count(arch, 16, "all-linear")
    assert f"3 x {trainable * 4 / 2**20:.0f} MiB" in rec.text()     # fp32 adapters, as PEFT saves them
    guessed = process.recommend(24, 0.135e9, "good enough", 3)
    assert "shape assumed" in guessed.reasons[0]
    assert trainable / calculator.estimate(0.135e9, "lora", r=16).trainable_params > 1.5   # the guess priced


@pytest.mark.model
def test_registry_shape_is_the_loaded_models_config(real_model):
    model, _ = real_model
    from_config = lora.arch_from_config(model.config, "smollm2-135m")
    used = process.recommend(24, "smollm2-135m-instruct").reasons[0]
    assert calculator.resolve_arch("smollm2-135m-instruct") == lora.ArchShape(
        **{**from_config.to_dict(), "head_dim": None})
    assert f"{from_config.layers} layers x {from_config.hidden} hidden" in used


def test_decision_widget_redraws_from_its_controls():
    w = process.decision_widget(gpu="T4", model="llama-2-7b")
    before = (w.figure.layout.title.text, tuple(w.figure.data[0].y))
    assert w.recommendation.method == "qlora" and "QLORA" in w.figure.layout.title.text
    w.controls["model"].value = "llama-3.2-1b"
    assert w.recommendation.method == "lora"
    assert tuple(w.figure.data[0].y) != before[1]
    w.controls["gpu"].value = calculator.gpu_label("H200")
    assert w.figure.data[1].y[0] == calculator.GPUS["H200 (140.4 GiB)"]
    assert set(process.MODELS) <= set(lora.ARCHITECTURES)


def test_reply_loss_counts_only_replies(reply_nll):
    """Batched with padding, the loss is the hand-computed cross-entropy on the reply tokens alone."""
    model, tok = toy_model()
    rec = {"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi there."}]}
    long_prompt = {"messages": [{"role": "user", "content": "Say hi. " * 20}, rec["messages"][1]]}
    sums = [reply_nll(model, tok, r["messages"]) for r in (rec, long_prompt)]
    expected = sum(s for s, _ in sums) / sum(n for _, n in sums)
    assert probes.reply_loss(model, tok, [rec, long_prompt], batch_size=2) == pytest.approx(expected, rel=1e-5)
    nll, n = sums[0]
    assert probes.reply_loss(model, tok, [rec]) == pytest.approx(nll / n, rel=1e-5)
    with pytest.raises(ValueError, match="no reply tokens"):
        probes.reply_loss(model, tok, [long_prompt], max_length=8)


def test_grid_runs_every_point_and_sorts():
    points = process.grid(learning_rate=[1e-4, 3e-4], lora_r=[4, 16])
    assert len(points) == 4 and points[0] == {"learning_rate": 1e-4, "lora_r": 4}
    table = process.run_grid(points, lambda p: {"val_loss": p["learning_rate"] * p["lora_r"]}, sort_by="val_loss")
    assert list(table.columns) == ["learning_rate", "lora_r", "val_loss"]
    assert table["val_loss"].is_monotonic_increasing
    with pytest.raises(ValueError, match="lora_r"):
        process.grid(lora_r=[])


def test_early_stop_step_and_noise_widget():
    evals = [{"step": s, "eval_loss": v} for s, v in [(2, 3.0), (4, 2.5), (6, 2.6), (8, 2.7), (10, 2.4)]]
    assert process.early_stop_step(evals, patience=2) == 8
    assert process.early_stop_step(evals, patience=3) is None
    w = process.noise_widget(3.0, 2.0, {0.2: 1.9, 0.6: 2.5}, small_n=10, large_n=100)
    assert "small clean" in w.figure.layout.title.text and w.figure.data[0].y[2] == 2.5
    w.controls["noise_rate"].value = 0.2
    assert "large noisy" in w.figure.layout.title.text and w.figure.data[0].y[2] == 1.9
    judged = process.noise_widget(3.0, 2.0, {0.2: 1.9, 0.6: 2.5}, small_n=10, large_n=100,
                                  verdicts={0.2: "within noise", 0.6: True})
    assert "small clean" in judged.figure.layout.title.text
    judged.controls["noise_rate"].value = 0.2
    assert "within noise" in judged.figure.layout.title.text


def test_per_record_losses_add_up_to_the_reply_loss():
    model, tok = toy_model()
    recs = [{"messages": [{"role": "user", "content": u}, {"role": "assistant", "content": a}]}
            for u, a in [("Say hi.", "Hi there."), ("Count.", "One two three four."), ("Go.", "Off we go now.")]]
    per = probes.reply_losses(model, tok, recs, batch_size=2)   # batched by length, returned in order
    assert len(per) == 3 and all(c > 0 for _, c in per)
    alone = [probes.reply_losses(model, tok, [r])[0] for r in recs]
    assert [c for _, c in per] == [c for _, c in alone]
    assert [s for s, _ in per] == pytest.approx([s for s, _ in alone], rel=1e-5)
    assert probes.mean_loss(per) == pytest.approx(probes.reply_loss(model, tok, recs), rel=1e-6)
    assert probes.per_token(per) == pytest.approx([s / c for s, c in per])


def run_with(per_record):
    return {"heldout_loss": sum(per_record) / len(per_record), "heldout_per_record": per_record}


def test_clean_against_noisy_judges_each_rate_against_its_noise_band():
    """Clean wins clearly at 70% (every record worse when noisy), not at 30% (records scattered
    both ways), and a noisy set that wins clearly is "does not hold"."""
    clean = run_with([2.0, 2.2, 1.8, 2.1])
    rows = process.clean_against_noisy(clean, {0.7: run_with([2.5, 2.6, 2.4, 2.5]),
                                               0.3: run_with([2.3, 1.9, 2.0, 1.9]),
                                               0.1: run_with([1.5, 1.7, 1.3, 1.6])})
    by_rate = {r["noise rate"]: r for r in rows}
    assert [r["noise rate"] for r in rows] == [0.1, 0.3, 0.7]
    assert by_rate[0.7]["verdict"] is True and by_rate[0.7]["noisy minus clean (per record)"] == pytest.approx(0.475)
    assert by_rate[0.3]["verdict"] == "within noise" and by_rate[0.3]["reads"].startswith("within noise")
    assert by_rate[0.1]["verdict"] is False and by_rate[0.7]["records"] == 4
    with pytest.raises(ValueError):
        process.clean_against_noisy(clean, {0.5: run_with([2.0, 2.0])})   # records must pair up


def test_validation_by_record_scores_every_few_steps_as_the_trainer_would():
    """The callback's per-record losses, every 2 steps, average to about the trainer's own
    validation loss at the same steps."""
    from labkit import train

    model, tok = toy_model()
    recs = [{"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": f"{w} {w} {w}."}]}
            for w in ("hi", "yes", "no", "go", "up", "down")]
    by_record = process.validation_by_record(tok, recs[4:], max_length=32, every=2)
    run = train(model, tok, recs[:4], eval_data=recs[4:], method="lora", steps=4, batch_size=2, max_length=32,
                learning_rate=1e-2, eval_every=2, mixed_precision="no", live=False, callbacks=[by_record])
    assert [r["step"] for r in by_record.rows] == [e["step"] for e in run.history.evals] == [2, 4]
    for row, ev in zip(by_record.rows, run.history.evals):
        assert len(row["per_record"]) == 2 and probes.mean_loss(row["per_record"]) == pytest.approx(ev["eval_loss"], rel=0.05)
    with pytest.raises(ValueError, match="every=0"):
        process.validation_by_record(tok, recs, every=0)


def test_overfitting_verdict_follows_the_rise_and_its_band():
    from types import SimpleNamespace

    def judged(evals, train_losses=(3.0, 1.0)):
        rows = [{"step": 2 * (i + 1), "per_record": [(x, 1) for x in per]} for i, per in enumerate(evals)]
        history = SimpleNamespace(rows=[{"loss": x} for x in train_losses])
        return process.overfitting(history, SimpleNamespace(rows=rows))

    low, steady_rise, mixed = [1.0, 1.2, 0.8, 1.0], [1.5, 1.7, 1.3, 1.5], [2.5, 0.2, 2.3, 0.0]
    fit = judged([[1.3] * 4, low, steady_rise])
    assert fit["verdict"] is True and fit["lowest step"] == 4 and fit["rise"] == pytest.approx(0.5)
    assert fit["noise band"] == pytest.approx(0.0) and fit["curve"][1] == (4, pytest.approx(1.0))
    assert judged([low, mixed])["verdict"] == "within noise"       # the same +0.25 on average, records disagree
    assert judged([steady_rise, low])["verdict"] is False          # the last evaluation is the lowest
    assert judged([low, steady_rise], train_losses=(1.0, 2.0))["verdict"] is False   # training loss did not fall
    with pytest.raises(ValueError, match="no validation scores"):
        judged([])
