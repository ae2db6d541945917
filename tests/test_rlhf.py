"""RLHF helpers: sampling, reward scores and accuracy, and each TRL stage for a step on toy models."""
import json

import pytest
import torch

from labkit import rlhf

PAIRS = [
    {"prompt": "What is a fjord?", "chosen": "A sea inlet.", "rejected": "Well, so, fjords, let me think, hmm, it is a long story."},
    {"prompt": "What is rain?", "chosen": "Water falling.", "rejected": "Rain, you know, is kind of, like, a big topic really."},
    {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Oh, colours! There are so many, and honestly I love them all."},
    {"prompt": "Two plus two?", "chosen": "Four.", "rejected": "Let me start by saying that arithmetic is a wonderful thing."},
]


def toy_reward_model(tok, seed=0):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         num_labels=1, pad_token_id=tok.pad_token_id)
    return LlamaForSequenceClassification(config).eval()


def tiny_cfg(**kw):
    sizes = dict(reward_steps=2, reward_batch_size=2, reward_max_length=48, policy_steps=1, num_generations=2,
                 prompts_per_step=1, max_completion_length=6, dpo_steps=1, dpo_batch_size=2, dpo_max_length=48,
                 lora_r=2, lora_alpha=4)
    return rlhf.RLHFConfig(**{**sizes, **kw}).validate()


def test_pairwise_accuracy_hand_made_case():
    # pair 1 right, pair 2 wrong, pair 3 a tie (half), pair 4 right: (1 + 0 + 0.5 + 1) / 4
    assert rlhf.pairwise_accuracy([2.0, -1.0, 0.3, 5.0], [1.0, 0.0, 0.3, -5.0]) == pytest.approx(0.625)
    with pytest.raises(ValueError):
        rlhf.pairwise_accuracy([1.0], [])


def test_reward_accuracy_against_a_hand_made_scorer(toy, monkeypatch):
    """A scorer that rewards brevity (minus the word count) gets every shipped-style pair right;
    one that rewards length gets every pair wrong."""
    _, tok = toy

    def brevity(model, tok, prompts, responses, max_length=None, batch_size=8):
        return [-float(len(r.split())) for r in responses]

    monkeypatch.setattr(rlhf, "reward_scores", brevity)
    got = rlhf.reward_accuracy(None, tok, PAIRS)
    assert got["accuracy"] == 1.0 and got["pairs"] == 4 and got["mean_margin"] > 0
    monkeypatch.setattr(rlhf, "reward_scores", lambda m, t, p, r, *a, **k: [float(len(x)) for x in r])
    assert rlhf.reward_accuracy(None, tok, PAIRS)["accuracy"] == 0.0


def test_reward_scores_do_not_depend_on_batching_or_padding(toy):
    _, tok = toy
    rm = toy_reward_model(tok)
    prompts = [p["prompt"] for p in PAIRS]
    responses = [p["rejected"] if i % 2 else p["chosen"] for i, p in enumerate(PAIRS)]
    batched = rlhf.reward_scores(rm, tok, prompts, responses, max_length=64, batch_size=4)
    single = [rlhf.reward_scores(rm, tok, [p], [r], max_length=64)[0] for p, r in zip(prompts, responses)]
    assert batched == pytest.approx(single, abs=1e-4)
    ids = rlhf.reward_input_ids(tok, "What is rain?", "Water falling.", max_length=10)
    assert len(ids) == 10


def test_config_validates_and_serialises():
    from labkit import profile

    cfg = rlhf.RLHFConfig.for_profile(profile("smoke"))
    assert json.loads(json.dumps(cfg.to_dict()))["seed"] == 0
    with pytest.raises(ValueError, match="num_generations"):
        rlhf.RLHFConfig(num_generations=1).validate()
    with pytest.raises(ValueError, match="dpo_steps"):
        rlhf.RLHFConfig(dpo_steps=0).validate()
    with pytest.raises(ValueError, match="temperature"):
        rlhf.RLHFConfig(temperature=0.0).validate()
    assert cfg.to_dict()["cpu_full_logits"] is True and cfg.to_dict()["adapter_sums_fp32"] is True
    with pytest.raises(ValueError, match="cpu_full_logits"):
        rlhf.RLHFConfig(cpu_full_logits=1).validate()
    with pytest.raises(ValueError, match="reward_steps=2.5"):   # a count of steps is a whole number
        rlhf.RLHFConfig(reward_steps=2.5).validate()
    # the same style as TrainConfig: a dict and back, and unknown fields named
    assert rlhf.RLHFConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown RLHFConfig field\(s\) \['steps'\]"):
        rlhf.RLHFConfig.from_dict({"steps": 3})


def test_sample_responses_shape_and_checks(toy):
    model, tok = toy
    samples = rlhf.sample_responses(model, tok, ["Hi?", "Name a colour."], n=3, max_new_tokens=4)
    assert [s["prompt"] for s in samples] == ["Hi?", "Name a colour."]
    assert all(len(s["responses"]) == 3 and all(isinstance(r, str) for r in s["responses"]) for s in samples)
    with pytest.raises(ValueError, match="n=1"):
        rlhf.sample_responses(model, tok, ["Hi?"], n=1)
    with pytest.raises(ValueError, match="temperature"):
        rlhf.sample_responses(model, tok, ["Hi?"], temperature=0)


def test_train_reward_model_runs_and_returns_a_plain_model(toy):
    _, tok = toy
    rm = toy_reward_model(tok)
    result = rlhf.train_reward_model(rm, tok, PAIRS, tiny_cfg(), live=False)
    assert result.stopped == "finished" and [r["step"] for r in result.rows] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in result.rows)
    assert not hasattr(result.model, "peft_config")  # merged: plain weights
    assert len(rlhf.reward_scores(result.model, tok, ["Hi?"], ["Hello."])) == 1


@pytest.fixture
def adapter_weights(monkeypatch):
    """``{"before": {...}, "after": {...}}``: the LoRA parameters of the model a TRL trainer trains,
    copied as its ``train()`` begins and ends (the adapter is added inside the trainer)."""
    import trl

    seen = {}

    def spy(cls):
        original = cls.train

        def train(self, *args, **kwargs):
            def lora():
                return {n: p.detach().clone() for n, p in self.model.named_parameters() if "lora_" in n}

            seen["before"] = lora()
            try:
                return original(self, *args, **kwargs)
            finally:
                seen["after"] = lora()

        monkeypatch.setattr(cls, "train", train)

    spy(trl.DPOTrainer)
    spy(trl.GRPOTrainer)
    return seen


def changed(weights):
    before, after = weights["before"], weights["after"]
    assert before and before.keys() == after.keys(), "no LoRA adapter was trained"
    return [n for n in before if not torch.equal(before[n], after[n])]


def test_grpo_step_moves_the_adapter_and_logs_reward_and_kl(toy, adapter_weights):
    policy, tok = toy
    rm = toy_reward_model(tok, seed=1)
    result = rlhf.optimise_policy(policy, tok, rm, [p["prompt"] for p in PAIRS], tiny_cfg(), live=False)
    assert result.stopped == "finished" and len(result.rows) == 1
    row = result.rows[0]
    assert {"reward", "kl", "completions/mean_length"} <= set(row)
    # the two samples scored differently, so their advantages are not zero and the step moved the adapter
    assert row["reward_std"] > 0 and row["grad_norm"] > 0
    assert any("lora_B" in n for n in changed(adapter_weights)), "GRPO's step left the adapter as it was"
    assert len(result.curves.figure.data[0].y) == 1  # the live curve got its point


def test_dpo_moves_the_adapter_and_widens_the_margin(toy, adapter_weights):
    """Step 1 sees the policy equal to the reference (LoRA starts as a no-op): margin 0, loss
    -log sigmoid(0) = log 2. After one update on the same four pairs the chosen answers gain on
    the rejected ones."""
    import math

    policy, tok = toy
    result = rlhf.train_dpo(policy, tok, PAIRS, tiny_cfg(dpo_steps=2, dpo_batch_size=4, dpo_learning_rate=5e-3),
                            live=False)
    assert result.stopped == "finished" and len(result.rows) == 2
    first, second = result.rows
    assert first["rewards/margins"] == pytest.approx(0, abs=1e-6) and first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert second["rewards/margins"] > 1e-3 and second["rewards/accuracies"] == 1.0
    assert second["loss"] < first["loss"]
    assert any("lora_B" in n for n in changed(adapter_weights)), "DPO left the adapter as it was"
    # TRL trained with gradient checkpointing and use_cache=False; the model handed back generates
    # with its cache again (without it every new token recomputes the whole text)
    assert not result.model.is_gradient_checkpointing
    assert result.model.config.use_cache and result.model.generation_config.use_cache is not False
    # measured here, not by TRL: the trained policy prefers each pair's chosen reply more than the
    # reference does (this catches chosen and rejected swapped on the way into TRL)
    from labkit.predictions import continuation_logprob

    def preference(model):
        return sum(continuation_logprob(model, tok, prompt, p["chosen"]) -
                   continuation_logprob(model, tok, prompt, p["rejected"])
                   for p in PAIRS for prompt in [tok.apply_chat_template(rlhf.chat(p["prompt"]), tokenize=False,
                                                                         add_generation_prompt=True)])

    with torch.no_grad():
        tuned = preference(result.model)
        with result.model.disable_adapter():
            reference = preference(result.model)
    assert tuned > reference


def test_compare_policies_and_reward_widget(toy):
    policy, tok = toy
    rm = toy_reward_model(tok)
    summary, table = rlhf.compare_policies({"base": policy}, tok, rm, tok, ["Hi?", "Name a colour."],
                                           max_new_tokens=4, train_times={"base": 0.0})
    assert list(summary["method"]) == ["base"] and len(table) == 2
    assert rlhf.comparison_figure(summary).layout.title.text.startswith("On held-out prompts")

    w = rlhf.reward_widget(rm, tok, prompt="Hi?", a="Hello.", b="Well, hello there, friend.")
    before = tuple(w.figure.data[0].y)
    w.response_b.value = "Bye."
    after = tuple(w.figure.data[0].y)
    assert before[0] == pytest.approx(after[0]) and before[1] != after[1]
    assert "prefers" in w.figure.layout.title.text
    # the preferred response is drawn in the "chosen" colour, whichever it is (it was always A)
    a_score, b_score = after
    winner = 0 if a_score > b_score else 1
    colors = list(w.figure.data[0].marker.color)
    assert colors[winner] == rlhf.METHOD_COLORS["chosen"] and colors[1 - winner] == rlhf.METHOD_COLORS["rejected"]
    w.response_a.value, w.response_b.value = w.response_b.value, w.response_a.value
    assert list(w.figure.data[0].marker.color) == colors[::-1]


@pytest.mark.model
def test_real_reward_model_has_one_output_and_a_pad_token():
    model, tok = rlhf.load_reward_model()
    assert model.config.num_labels == 1 and model.config.pad_token_id == tok.pad_token_id
    scores = rlhf.reward_scores(model, tok, ["What is rain?"] * 2, ["Water falling from clouds.", "Hmm."])
    assert len(scores) == 2 and all(map(lambda s: s == s, scores))


@pytest.mark.parametrize("stage", ["dpo", "grpo"])
def test_full_logits_on_cpu_match_trls_chunked_head(stage, chunked_head_calls):
    """On the CPU, DPO and GRPO score tokens from the full logits instead of TRL's chunked LM head
    (faster there; labkit.patches.full_logits_on_cpu): every logged number must be the same, and
    TRL's chunked kernel must not run."""
    import trl.trainer.utils as trl_utils

    from labkit.toy import toy_model

    def run(**switch):
        policy, tok = toy_model()
        cfg = tiny_cfg(dpo_steps=2, policy_steps=2, temperature=0.7, **switch)
        if stage == "dpo":
            return rlhf.train_dpo(policy, tok, PAIRS, cfg, live=False).rows
        return rlhf.optimise_policy(policy, tok, toy_reward_model(tok, seed=1), [p["prompt"] for p in PAIRS],
                                    cfg, live=False).rows

    calls = chunked_head_calls
    ours = run()
    assert not calls, "labkit should not use TRL's chunked head on the CPU"
    assert trl_utils._ChunkedLogProbFunction.__name__ == "Spy", "the swap must end with training"
    trls = run(cpu_full_logits=False)   # TRL's own head
    assert calls, "the reference run should use TRL's chunked head"
    keys = [k for k in trls[0] if k not in ("elapsed_s",) and "time" not in k and "per_second" not in k]
    assert len(ours) == len(trls) == 2 and {"loss"} <= set(keys)
    for a, b in zip(ours, trls):
        assert {k: a[k] for k in keys} == pytest.approx({k: b[k] for k in keys}, rel=1e-4, abs=1e-6), stage


def test_cutting_only_one_side_of_a_pair_is_counted_and_warned_about(capsys):
    """Issue #22: every rejected answer (134-218 tokens) was cut at 128 and no chosen one (56-89):
    the reward model could learn "was cut" instead of "rambles"."""
    from labkit.rlhf import first_words, one_side_cut, reward_dataset
    from labkit.toy import toy_tokenizer

    tok = toy_tokenizer()
    pairs = [{"prompt": "Q?", "chosen": "Short.", "rejected": "Long and rambling " * 20},
             {"prompt": "Q?", "chosen": "Also long " * 20, "rejected": "Long and rambling " * 20}]
    longest = max(len(rlhf.reward_input_ids(tok, p["prompt"], p[k])) for p in pairs for k in ("chosen", "rejected"))
    assert one_side_cut(tok, pairs, 30) == 1 and one_side_cut(tok, pairs, longest) == 0
    reward_dataset(tok, pairs, 30)
    assert "1 of 2 pairs have one answer longer than reward_max_length=30" in capsys.readouterr().out
    reward_dataset(tok, pairs, longest)
    assert capsys.readouterr().out == ""
    assert first_words("one two  three four", 2) == "one two"


def test_verdict_needs_ten_percent_fewer_words_beyond_the_noise():
    import pandas as pd

    from labkit.rlhf_views import verdict

    base_words, base_reward = [100, 90, 110, 100], [0.0, 0.1, -0.1, 0.0]
    answers = pd.DataFrame({"base words": base_words, "base reward": base_reward,
                            "DPO words": [40, 35, 50, 45], "DPO reward": [1.0, 1.2, 0.9, 1.1],        # clear
                            "GRPO words": [98, 95, 104, 96], "GRPO reward": [0.1, -0.2, 0.2, 0.0]})  # noise
    summary = pd.DataFrame([
        {"method": m, "mean reward": answers[f"{m} reward"].mean(), "mean words": answers[f"{m} words"].mean(),
         "finished answers": 1.0, "training time (s)": 1.0} for m in ("base", "DPO", "GRPO")])
    text = verdict(summary, steps={"DPO": 10, "GRPO": 10}, profile="cpu", answers=answers).splitlines()
    assert "moved the answers towards the target" in text[0] and text[0].startswith("DPO")
    assert "did NOT clearly improve" in text[1] and "noise ±" in text[1]
    assert "cut at the completion limit" not in text[1]
    clipped = verdict(summary, steps={"DPO": 10, "GRPO": 10}, profile="cpu", answers=answers,
                      clipped={"GRPO": 0.98}).splitlines()[1]
    assert "98% of its training samples were cut at the completion limit" in clipped
    # the same GRPO shortening without per-prompt answers is judged only against the 10% rule
    shorter = answers.assign(**{"GRPO words": [80, 70, 85, 80], "GRPO reward": [2.0, 2.1, 1.9, 2.0]})
    summary.loc[2, ["mean words", "mean reward"]] = [shorter["GRPO words"].mean(), 2.0]
    assert "moved the answers" in verdict(summary, {}, "cpu", answers=shorter).splitlines()[1]
