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
    ("weight_decay", float("nan")), ("weight_decay", float("inf")), ("max_grad_norm", float("inf")),
    ("lora_r", True), ("lora_alpha", "16"), ("lora_dropout", "0.1"), ("target_modules", "q_proj,v_proj"),
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
    assert not result.model.is_gradient_checkpointing and result.model.config.use_cache   # ready to generate


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


# --- runs that go wrong (issue #18) -------------------------------------------------------------

def test_a_diverging_run_stops_and_really_restores_the_weights(toy, toy_text):
    """learning_rate=1e3 makes the toy's weights NaN within a few steps; the run must not say
    "finished", and the weights must be the ones from before the run, as the message says."""
    model, tok = toy
    before = params_snapshot(model)
    result = train(model, tok, toy_text, method="full", steps=8, learning_rate=1e3)
    assert result.history.stopped.startswith("diverged at step ")
    assert "restored to those before this run" in result.history.stopped
    after = params_snapshot(result.model)
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_a_loss_at_the_uniform_level_stops_the_run():
    """A loss that starts well below ln(vocabulary) and climbs to it is a collapsed model."""
    from types import SimpleNamespace

    from labkit.guards import DivergenceGuard

    guard, control = DivergenceGuard(vocab_size=49152), SimpleNamespace(should_training_stop=False)
    guard.on_log(None, SimpleNamespace(global_step=1), control, logs={"loss": 2.5, "grad_norm": 3.0})
    guard.on_log(None, SimpleNamespace(global_step=2), control, logs={"loss": 4.0, "grad_norm": 3.0})
    assert guard.reason is None and not control.should_training_stop
    guard.on_log(None, SimpleNamespace(global_step=3), control, logs={"loss": 10.7, "grad_norm": 0.01})
    assert control.should_training_stop and guard.reason.startswith("diverged at step 3")
    assert "guesses every token uniformly" in guard.reason and "reload the model" in guard.reason  # no copy kept
    random_start = DivergenceGuard(vocab_size=320)   # a random model starts at the uniform level: fine
    for step in (1, 2):
        random_start.on_log(None, SimpleNamespace(global_step=step), control, logs={"loss": 5.77})
    assert random_start.reason is None


def test_a_hard_batch_after_an_easy_one_is_not_a_divergence():
    """One batch's loss varies: notebook 08's cpu run started on an easy batch (0.72) and met a harder
    one (2.84) at step 2. That is not a diverged run, and stopping it left full fine-tuning and LoRA
    untrained. A loss far above half the uniform level still is (03's lr=1e-2 reached 5.9 and 16)."""
    from types import SimpleNamespace

    from labkit.guards import DivergenceGuard

    control = SimpleNamespace(should_training_stop=False)
    guard = DivergenceGuard(vocab_size=49152)
    for step, loss in enumerate([0.72, 2.84, 2.94, 1.9], start=1):
        guard.on_log(None, SimpleNamespace(global_step=step), control, logs={"loss": loss, "grad_norm": 2.0})
    assert guard.reason is None and not control.should_training_stop
    guard = DivergenceGuard(vocab_size=49152)
    for step, loss in enumerate([2.19, 5.93], start=1):
        guard.on_log(None, SimpleNamespace(global_step=step), control, logs={"loss": loss, "grad_norm": 2.0})
    assert control.should_training_stop and guard.reason.startswith("diverged at step 2: the loss rose from 2.19 to 5.93")


def test_a_nan_loss_after_a_broken_update_says_the_weights_were_restored(toy, toy_text):
    """If an update made the weights NaN (here, a callback after the guard's check), the next loss
    is NaN: the message must not claim the weights are those of the step before."""
    class Break(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step == 2:
                with torch.no_grad():
                    next(p for p in model.parameters() if p.requires_grad).fill_(float("nan"))

    model, tok = toy
    before = params_snapshot(model)
    result = train(model, tok, toy_text, method="full", steps=6, callbacks=[Break()])
    assert result.history.stopped.startswith("diverged at step 3: loss became nan")
    assert "restored" in result.history.stopped and "step before" not in result.history.stopped
    assert all(torch.equal(before[n], p) for n, p in result.model.named_parameters())


def test_ctrl_c_before_training_starts_leaves_the_model_as_it_was(toy, toy_text, monkeypatch):
    import labkit.training as training

    def interrupted(*args, **kwargs):   # after the adapters were added, while the trainer is built
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "sft_config", interrupted)
    model, tok = toy
    before = params_snapshot(model)
    result = train(model, tok, toy_text, method="lora", steps=4)
    assert result.history.stopped == "interrupted before training started; the model is unchanged"
    assert result.model is model and not any("lora" in n for n, _ in model.named_modules())
    assert params_snapshot(model).keys() == before.keys()
    monkeypatch.undo()
    assert train(model, tok, toy_text, method="lora", steps=2).history.stopped == "finished"


def test_interrupts_deferred_holds_ctrl_c_until_the_block_ends():
    import os
    import signal

    from labkit.guards import interrupts_deferred

    done = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("the rest of the block ran")
    assert done == ["the rest of the block ran"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("data,message", [
    ([{"text": "ok"}, {"text": ""}], r"train_data\[1\]: field 'text' is empty"),
    ([{"text": "ok"}, None], r"train_data\[1\]: expected a dict, got NoneType"),
    ([{"messages": [{"role": "assistant", "content": "hi"}]}], r"train_data\[0\]: a conversation needs a user"),
    ([{"prompt": "p", "chosen": "a", "rejected": "b"}], r"train_data\[0\]: format 'preference' cannot be used"),
])
def test_lists_passed_to_train_are_checked_like_files(toy, data, message):
    model, tok = toy
    with pytest.raises(ValueError, match=message):
        train(model, tok, data, method="lora", steps=1)
    assert not any("lora" in n for n, _ in model.named_modules())


def test_duplicates_are_reported_and_a_mistyped_target_module_is_refused(toy, toy_text, capsys):
    model, tok = toy
    with pytest.raises(ValueError, match=r"target_modules: \['q_prj'\] match no linear layer.*'q_proj'"):
        train(model, tok, toy_text, method="lora", steps=1, target_modules=["q_proj", "q_prj"])
    train(model, tok, [{"text": "a b c"}, {"text": "d e"}, {"text": "a b c"}], method="full", steps=1)
    assert "train_data: 1 record(s) repeat an earlier one exactly (e.g. train_data[2] = train_data[0])" in \
        capsys.readouterr().out


def test_the_weight_check_finds_nan_and_infinity_and_not_a_sum_that_overflows():
    """The guard checks each parameter's sum after every step (cheap) and only then the elements:
    a NaN or an infinity anywhere is found; finite weights whose sum overflows float32 are not."""
    from labkit.guards import non_finite_weights

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    assert non_finite_weights(model) == []
    with torch.no_grad():
        model[0].weight.fill_(3e38)                     # finite, but the sum of 16 of them is inf
        assert non_finite_weights(model) == []
        model[1].bias[2] = float("nan")
        model[2].weight[0, 0] = float("-inf")
    assert non_finite_weights(model) == ["1.bias", "2.weight"]
    model[1].bias.requires_grad_(False)                 # frozen parameters are not the guard's concern
    assert non_finite_weights(model) == ["2.weight"]
