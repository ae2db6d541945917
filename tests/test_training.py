import math

import pytest
import torch
from transformers import TrainerCallback

from labkit.toy import toy_model
from labkit.training import TrainConfig, run_trainer, train


def params_snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("field,value", [
    ("learning_rate", 0), ("learning_rate", -1e-4), ("learning_rate", float("nan")),
    ("lora_r", 0), ("batch_size", 0), ("steps", 0), ("method", "magic"), ("schedule", "zigzag"),
    ("warmup_steps", -1), ("max_length", 4), ("cpu_full_logits", "yes"), ("packing_strategy", "tight"),
])
def test_bad_hyperparameters_fail_before_any_work(toy, toy_text, field, value):
    model, tok = toy
    before = params_snapshot(model)
    with pytest.raises(ValueError, match=field):
        train(model, tok, toy_text, **{field: value})
    after = params_snapshot(model)
    assert before.keys() == after.keys()  # no adapters were added
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_full_training_lowers_the_loss_and_records_a_history(toy, toy_text):
    model, tok = toy
    result = train(model, tok, toy_text, method="full", learning_rate=3e-3, steps=8, batch_size=8)
    h = result.history
    assert h.stopped == "finished" and len(h.rows) == 8
    assert h.losses[-1] < h.losses[0]
    for key in ("loss", "learning_rate", "grad_norm", "tokens_per_s", "peak_memory_mb"):
        assert all(r[key] is not None and math.isfinite(r[key]) for r in h.rows), key
    assert h.peak_memory_mb > 0 and h.config["method"] == "full"


def test_lora_trains_only_adapters(toy, toy_text):
    model, tok = toy
    base = params_snapshot(model)
    result = train(model, tok, toy_text, method="lora", lora_r=4, learning_rate=1e-2, steps=3)
    trainable = [n for n, p in result.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    for name, p in result.model.named_parameters():
        clean = name.replace("base_model.model.", "").replace(".base_layer", "")
        if clean in base:
            assert torch.equal(p, base[clean]), name


def test_eval_and_schedule(toy, toy_text):
    model, tok = toy
    result = train(model, tok, toy_text[:6], eval_data=toy_text[6:], method="full", steps=4,
                   eval_every=2, schedule="linear", warmup_steps=2, learning_rate=1e-3)
    assert [e["step"] for e in result.history.evals] == [2, 4]
    lrs = [r["learning_rate"] for r in result.history.rows]
    assert lrs[0] < lrs[1]  # warmup


def test_same_seed_gives_identical_losses(toy_text):
    runs = []
    for _ in range(2):
        model, tok = toy_model(seed=0)
        runs.append(train(model, tok, toy_text, method="lora", steps=4, seed=3, lora_dropout=0.1).history.losses)
    assert runs[0] == runs[1]


def test_non_finite_loss_stops_and_keeps_finite_weights(toy, toy_text):
    model, tok = toy
    calls = {"n": 0}

    def poison(module, inputs, output):
        if module.training:
            calls["n"] += 1
            if calls["n"] >= 3:
                return output * float("nan")
        return output

    model.model.norm.register_forward_hook(poison)
    result = train(model, tok, toy_text, method="full", steps=6, learning_rate=1e-3)
    assert "step 3" in result.history.stopped and "nan" in result.history.stopped
    assert len(result.history.rows) == 2
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_keyboard_interrupt_returns_partial_history(toy, toy_text):
    class Interrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 2:
                raise KeyboardInterrupt

    model, tok = toy
    result = train(model, tok, toy_text, method="full", steps=6, callbacks=[Interrupt()])
    assert result.history.stopped == "interrupted at step 2"
    assert len(result.history.rows) >= 1
    from labkit.predictions import generate
    assert isinstance(generate(result.model, tok, "The", max_new_tokens=2), str)


def test_chat_data_trains_on_the_reply_only(toy, reply_nll):
    """The batches that reach the model carry labels -100 on every prompt token and the reply's own
    ids on the reply, and the first logged loss is the cross-entropy on the reply tokens alone."""
    model, tok = toy
    chats = [[{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi there"}],
             [{"role": "user", "content": "Count to three please"}, {"role": "assistant", "content": "one, two"}]]
    batches = []

    def grab(module, args, kwargs):
        if module.training:
            batches.append({k: kwargs.get(k) for k in ("input_ids", "labels")})

    model.register_forward_pre_hook(grab, with_kwargs=True)
    result = train(model, tok, [{"messages": m} for m in chats], method="full", steps=1, batch_size=2,
                   learning_rate=1e-3, mixed_precision="no")
    assert result.history.stopped == "finished" and len(batches) == 1
    assert batches[0]["labels"] is not None, "the model got no labels: find where the loss mask is made now"
    expected = {}
    for chat in chats:
        prompt = tok.apply_chat_template(chat[:1], add_generation_prompt=True)["input_ids"]
        full = tok.apply_chat_template(chat)["input_ids"]
        assert full[:len(prompt)] == prompt and len(full) > len(prompt)
        expected[tuple(full)] = [-100] * len(prompt) + full[len(prompt):]
    seen = set()
    for ids, labels in zip(batches[0]["input_ids"].tolist(), batches[0]["labels"].tolist()):
        full = next(f for f in expected if list(f) == ids[:len(f)])   # each row: one record, then padding
        seen.add(full)
        assert labels == expected[full] + [-100] * (len(ids) - len(full)), tok.decode(ids)
    assert seen == set(expected)
    fresh, _ = toy_model()   # the weights the first step's loss was computed with
    sums = [reply_nll(fresh, tok, chat) for chat in chats]
    assert result.history.losses[0] == pytest.approx(sum(s for s, _ in sums) / sum(n for _, n in sums), rel=1e-5)


def test_config_round_trip(tmp_path):
    cfg = TrainConfig(method="dora", lora_r=4, seed=7)
    path = cfg.save(tmp_path / "c.json")
    assert TrainConfig.load(path) == cfg
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        TrainConfig.from_dict({"rank": 3})


@pytest.mark.parametrize("kind", ["text", "chat"])
def test_model_loss_on_cpu_matches_trls_fused_head(kind, toy_text, chunked_head_calls):
    """On the CPU labkit takes the model's own cross-entropy instead of TRL's chunked LM head
    (faster there; labkit.patches.guarded); the losses, eval loss and updates must be the same."""
    data = toy_text if kind == "text" else [
        {"messages": [{"role": "user", "content": f"Count to {i}"},
                      {"role": "assistant", "content": " ".join(str(j) for j in range(i))}]} for i in range(2, 10)]
    settings = dict(method="full", steps=3, batch_size=4, learning_rate=1e-3, mixed_precision="no",
                    eval_every=3)

    def run(**switch):
        model, tok = toy_model()
        r = train(model, tok, data, eval_data=data[:4], **settings, **switch)
        return r.history.losses + r.history.eval_losses

    calls = chunked_head_calls
    ours = run()
    assert not calls, "labkit should not use TRL's fused head on the CPU"
    trls = run(cpu_full_logits=False)   # TRL's own compute_loss
    assert calls, "the reference run should use TRL's fused head"
    assert len(ours) == len(trls) == 4
    assert ours == pytest.approx(trls, rel=1e-4)


def test_packing_fills_every_row(toy, toy_text):
    """Packed rows are max_length tokens of real text; unpacked rows are one text each, padded."""
    model, tok = toy
    packed = train(model, tok, toy_text, method="full", steps=2, batch_size=2, max_length=32, packing=True)
    packed_tokens = [r["tokens"] for r in packed.history.rows]
    model, tok = toy_model()   # every toy text is under 32 tokens: one per row, padded
    plain = train(model, tok, toy_text, method="full", steps=2, batch_size=2, max_length=32)
    plain_tokens = [r["tokens"] for r in plain.history.rows]
    # 2 rows x 32 tokens, but the corpus's last piece is shorter than a row
    assert max(packed_tokens) == 64 and min(packed_tokens) > max(plain_tokens)


def test_packing_refuses_chat_data_before_any_work(toy):
    model, tok = toy
    before = params_snapshot(model)
    chat = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}] * 4
    with pytest.raises(ValueError, match="packing=True"):
        train(model, tok, chat, packing=True)
    assert before.keys() == params_snapshot(model).keys()
    with pytest.raises(ValueError, match="packing"):
        train(model, tok, chat, packing="yes")


def test_seeding_keeps_deterministic_kernels_without_nan_filling():
    """Deterministic mode would fill every new tensor with NaN first, a cost on every CPU step
    (benchmarks/RESULTS.md); TrainConfig.fill_uninitialized_memory turns it back on."""
    from labkit.reproducibility import seeded

    with seeded(0):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.utils.deterministic.fill_uninitialized_memory is False
    with seeded(0, fill_uninitialized_memory=True):
        assert torch.utils.deterministic.fill_uninitialized_memory is True


def test_adapter_sums_in_float32_keep_an_adapter_smaller_than_bf16_rounding():
    """Under bf16 autocast PEFT adds a LoRA layer's output to the frozen layer's bf16 output, so a
    contribution under the rounding step is lost; inside adapter_sums_in_float32 it is kept, and the
    hooks are gone afterwards."""
    from peft import LoraConfig, get_peft_model

    from labkit.patches import adapter_sums_in_float32

    torch.manual_seed(0)
    model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(64, 64)),
                           LoraConfig(r=4, lora_alpha=4, target_modules=["0"]))
    layer = model.base_model.model[0]
    torch.nn.init.normal_(layer.lora_B["default"].weight, std=1e-5)   # a tiny, fresh adapter
    x = torch.randn(8, 64)
    with torch.no_grad():
        delta = layer.lora_B["default"](layer.lora_A["default"](x))    # float32, outside autocast
        with torch.autocast("cpu", dtype=torch.bfloat16):
            base = layer.base_layer(x).float()
            lost = model(x).float() - base
            with adapter_sums_in_float32(model):
                out = model(x)
            after = model(x)
    kept = out - base
    assert out.dtype == torch.float32 and after.dtype == torch.bfloat16
    assert (lost - delta).abs().mean() > 0.5 * delta.abs().mean(), "bf16 should round most of it away"
    assert (kept - delta).abs().max() < 0.01 * delta.abs().max()


@pytest.mark.parametrize("error, stopped", [(KeyboardInterrupt(), "interrupted at step 2"),
                                            ("nan", "loss became nan at step 3")])
def test_run_trainer_stops_every_stage_cleanly(error, stopped, capsys):
    """SFT and the three RLHF stages all run through run_trainer: a Ctrl-C or a non-finite loss
    ends training with the reason in the history and on screen, and the model back in eval mode."""
    from types import SimpleNamespace

    from labkit.patches import NonFiniteLoss

    class Trainer:   # just what run_trainer uses of a transformers Trainer
        def __init__(self, output_dir, callbacks):
            self.callbacks, self.state, self.model = callbacks, SimpleNamespace(global_step=2), torch.nn.Linear(2, 2)

        def remove_callback(self, callback):
            pass

        def train(self):
            raise error if error != "nan" else NonFiniteLoss(3, float("nan"))

    model, history = run_trainer(Trainer, "a stage", 5, seed=0, config={"seed": 0}, live=False)
    assert history.stopped.startswith(stopped) and history.wall_s >= 0 and history.config == {"seed": 0}
    assert isinstance(model, torch.nn.Linear) and not model.training
    assert f"[labkit] a stage: {history.stopped}" in capsys.readouterr().out
