"""Learning rate: the toy surface, divergence detection, schedules against transformers, and the
update-size callback on a toy model with a known update."""
import math

import numpy as np
import pytest
import torch

from labkit import learning_rate as lr_mod
from labkit.learning_rate import (SurfaceExplorer, ScheduleExplorer, UpdateSizeCallback, classify_path,
                                  descent_path, detect_divergence, schedule_curve, update_size_summary)
from labkit.training import SCHEDULES


@pytest.mark.parametrize("lr,regime", [(0.002, "crawling"), (0.1, "converging"), (0.17, "oscillating"),
                                       (0.25, "diverging")])
def test_surface_shows_the_four_regimes(lr, regime):
    # the steep direction has curvature 10: steps flip sign above lr=0.1 and grow above lr=0.2
    assert classify_path(descent_path(lr, steps=30)) == regime


def test_descent_path_is_gradient_descent_by_hand():
    path = descent_path(0.1, steps=1, start=(1.0, 1.0))
    assert np.allclose(path[1], [1 - 0.1 * 1.0, 1 - 0.1 * 10.0])
    with pytest.raises(ValueError, match="learning_rate"):
        descent_path(0.0)


def test_surface_explorer_redraws_when_the_slider_moves():
    ex = SurfaceExplorer(learning_rate=0.01, steps=20)
    before = list(ex.figure.data[1].y)
    ex.lr.value = 0.25
    assert list(ex.figure.data[1].y) != before and ex.regime == "diverging"
    assert "diverging" in ex.figure.layout.title.text
    ex.step.value = 3
    assert len(ex.figure.data[1].x) == 4


def test_regimes_animation_has_frames_for_every_step():
    fig = lr_mod.regimes_animation(steps=5)
    assert len(fig.frames) == 6 and len(fig.data) == 5


@pytest.mark.parametrize("losses,expected", [
    ([2.0, 1.8, 1.5], None), ([2.0, 2.5, 3.1, 9.0], 3), ([2.0, float("nan")], 2),
    ([2.0, float("inf")], 2), ([], None)])
def test_divergence_detection(losses, expected):
    assert detect_divergence(losses, factor=1.5) == expected


def test_divergence_factor_must_exceed_one():
    with pytest.raises(ValueError, match="factor"):
        detect_divergence([1.0], factor=1.0)


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_curves_by_hand(name):
    lrs = schedule_curve(name, total_steps=10, warmup_steps=4, learning_rate=1.0)
    assert len(lrs) == 10
    if name == "constant":
        assert lrs == [1.0] * 10
    else:
        assert lrs[:5] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    if name == "linear":
        assert lrs[9] == pytest.approx(1 / 6)  # (10 - 9) / (10 - 4)
    if name == "cosine":
        assert lrs[7] == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 6)))


def test_schedule_curve_is_what_the_trainer_uses(toy, toy_text):
    """The learning rates labkit.train applies follow schedule_curve (the same scheduler object)."""
    from labkit.training import train

    model, tok = toy
    seen = []

    from transformers import TrainerCallback

    class Spy(TrainerCallback):
        def on_step_begin(self, args, state, control, optimizer=None, **kw):
            seen.append(optimizer.param_groups[0]["lr"])

    train(model, tok, toy_text, method="full", steps=6, warmup_steps=2, schedule="linear",
          learning_rate=1e-3, callbacks=[Spy()], live=False)
    assert seen == pytest.approx(schedule_curve("linear", 6, 2, 1e-3))


def test_schedule_explorer_sliders_change_the_curves():
    ex = ScheduleExplorer(total_steps=50, warmup_steps=5)
    before = list(ex.figure.data[2].y)
    ex.warmup.value = 20
    assert list(ex.figure.data[2].y) != before
    ex.total.value = 30
    assert len(ex.figure.data[0].x) == 30 and "20 warmup" in ex.figure.layout.title.text


def test_update_size_callback_measures_a_known_update(toy):
    model, _ = toy
    cb = UpdateSizeCallback()

    class State:
        global_step = 0

    cb.on_step_begin(None, State(), None, model=model)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.001)  # every weight changes by exactly 0.1 % of itself
    cb.on_step_end(None, State(), None, model=model)
    values = [r["relative_update"] for r in cb.rows]
    assert values and all(v == pytest.approx(1e-3, rel=1e-4) for v in values)
    kinds = {r["kind"] for r in cb.rows}
    assert {"q_proj", "down_proj", "embed_tokens", "norm"} <= kinds
    s = update_size_summary(cb.rows)
    assert s["median"] == pytest.approx(1e-3, rel=1e-4) and s["n"] == len(values)


def test_update_size_during_training_matches_adam_first_step(toy, toy_text):
    """Adam's first step moves every weight with a non-zero gradient by ~lr (its sign), so
    |ΔW| ≈ lr·sqrt(n): the callback must see that for a 2-D projection weight."""
    from labkit.training import train

    model, tok = toy
    name = "model.layers.0.self_attn.q_proj.weight"
    w0 = dict(model.named_parameters())[name].detach().clone()
    cb = UpdateSizeCallback(include=lambda n: n == name)
    train(model, tok, toy_text, method="full", steps=1, learning_rate=1e-4, max_grad_norm=None,
          callbacks=[cb], live=False)
    expected = 1e-4 * math.sqrt(w0.numel()) / float(w0.norm())
    assert len(cb.rows) == 1 and cb.rows[0]["relative_update"] == pytest.approx(expected, rel=0.05)


def test_lr_sweep_labels_divergence(toy_text):
    from labkit.toy import toy_model

    plot = lr_mod.SweepPlot()
    rows = lr_mod.lr_sweep(lambda: toy_model(seed=0), toy_text, [1e-3, 3.0], plot=plot, method="full",
                           steps=4, batch_size=8, factor=1.2)
    assert [r["learning_rate"] for r in rows] == [1e-3, 3.0]
    assert rows[0]["diverged_at"] is None and rows[1]["diverged_at"] is not None
    assert "diverged" in plot.figure.data[1].name and len(plot.figure.data) == 2
    assert lr_mod.best_rate(rows)["learning_rate"] == 1e-3


def test_lr_sweep_scores_every_run_on_the_same_heldout_texts(toy_text):
    from labkit.predictions import perplexity
    from labkit.toy import toy_model

    # the toy corpus is too small to generalise from, so "held-out" here are texts it trains on:
    # this tests the bookkeeping (one "before", paired "after"), not generalisation
    train_part, heldout = toy_text, [r["text"] for r in toy_text[:4]]
    rows = lr_mod.lr_sweep(lambda: toy_model(seed=0), train_part, [1e-6, 1e-2], method="full",
                           steps=4, batch_size=8, max_length=32, heldout=heldout)
    model, tok = toy_model(seed=0)
    by_hand = [math.log(perplexity(model, tok, [t], max_length=32)) for t in heldout]
    for r in rows:
        assert r["heldout_before"] == pytest.approx(by_hand, rel=1e-5)   # the same fresh model, once
        assert len(r["heldout_after"]) == len(heldout)
    crawl, learn = rows
    assert abs(crawl["heldout_change"]) < 0.01 < -learn["heldout_change"]   # 1e-6 barely moves; 1e-2 learns
    assert lr_mod.best_rate(rows) is learn
    fig = lr_mod.heldout_figure(rows)
    assert list(fig.data[0].y) == pytest.approx([crawl["heldout_change"], learn["heldout_change"]])


def test_update_size_counts_the_embedding_rows_that_moved(toy, toy_text):
    from labkit.training import train

    model, tok = toy
    name = next(n for n, _ in model.named_parameters() if "embed_tokens" in n)
    w0 = dict(model.named_parameters())[name].detach().clone()
    cb = UpdateSizeCallback(include=lambda n: n == name)
    train(model, tok, toy_text, method="full", steps=1, learning_rate=1e-3, weight_decay=0.0,
          callbacks=[cb], live=False)
    w1 = dict(model.named_parameters())[name].detach()
    by_hand = float(((w1 - w0).abs().amax(dim=1) > 0).float().mean())
    assert cb.rows[0]["rows_changed"] == pytest.approx(by_hand)
    assert 0 < by_hand
