"""The decision helper, the held-out reply loss and the grid runner."""
import pytest

from labkit import process
from labkit.toy import toy_model


def test_recommend_follows_the_rules():
    assert process.recommend(24, 0.135e9, "highest", 1).method == "full"      # fits, quality first
    assert process.recommend(24, 0.135e9, "highest", 10).method == "lora"     # many variants
    assert process.recommend(16, 7e9, "good enough", 1).method == "lora"
    assert process.recommend(16, 13e9, "good enough", 1).method == "qlora"    # only 4-bit fits
    none = process.recommend(16, 70e9, "good enough", 1)
    assert none.method is None and "nothing fits" in none.text()
    rec = process.recommend(80, 7e9, "good enough", 5)
    assert any("5 variants" in r for r in rec.reasons) and set(rec.estimates) == {"full", "lora", "qlora"}
    with pytest.raises(ValueError, match="quality"):
        process.recommend(16, 7e9, "perfect")
    with pytest.raises(ValueError, match="variants"):
        process.recommend(16, 7e9, variants=0)


def test_decision_widget_redraws_from_its_controls():
    w = process.decision_widget(gpu="T4 (16 GB)", model="7B")
    before = (w.figure.layout.title.text, tuple(w.figure.data[0].y))
    w.controls["model"].value = "13B"
    assert w.recommendation.method == "qlora" and "QLORA" in w.figure.layout.title.text
    assert tuple(w.figure.data[0].y) != before[1]
    w.controls["gpu"].value = "H200 (141 GB)"
    assert w.figure.data[1].y[0] == 141


def test_reply_loss_counts_only_replies(reply_nll):
    """Batched with padding, the loss is the hand-computed cross-entropy on the reply tokens alone."""
    model, tok = toy_model()
    rec = {"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi there."}]}
    long_prompt = {"messages": [{"role": "user", "content": "Say hi. " * 20}, rec["messages"][1]]}
    sums = [reply_nll(model, tok, r["messages"]) for r in (rec, long_prompt)]
    expected = sum(s for s, _ in sums) / sum(n for _, n in sums)
    assert process.reply_loss(model, tok, [rec, long_prompt], batch_size=2) == pytest.approx(expected, rel=1e-5)
    nll, n = sums[0]
    assert process.reply_loss(model, tok, [rec]) == pytest.approx(nll / n, rel=1e-5)
    with pytest.raises(ValueError, match="no reply tokens"):
        process.reply_loss(model, tok, [long_prompt], max_length=8)


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
