"""Forgetting: probe scoring and perplexity against hand-computed values on a toy model, the
measurement bundle, replay mixing proportions, the frontier comparison and the widget."""
import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F_

from labkit import forgetting as F
from labkit.predictions import perplexity
from labkit.probes import cloze_accuracy, cloze_answers, cloze_correct, cloze_results


def test_perplexity_by_hand(toy):
    model, tok = toy
    text = "The capital of France is Paris."
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    logp = F_.log_softmax(logits[:-1].float(), -1)
    nll = -sum(float(logp[i, ids[0, i + 1]]) for i in range(ids.shape[1] - 1))
    assert perplexity(model, tok, [text], max_length=64) == pytest.approx(math.exp(nll / (ids.shape[1] - 1)), rel=1e-5)


def test_cloze_scoring_by_hand(toy):
    """An item is right only when the model's most likely token is the answer's at every answer
    position. A hook on the toy model's logits makes greedy decoding write " Paris." after the
    prompt, whatever the seed; " Paris!" is wrong at its last token only."""
    model, tok = toy
    prompt, answer = "The capital of France is", " Paris."
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    a_ids = tok(answer, add_special_tokens=False)["input_ids"]

    def steer(module, args, kwargs, output):   # every row whose text starts with the prompt: " Paris."
        for row, ids in enumerate(kwargs["input_ids"].tolist()):
            if ids[:len(p_ids)] == p_ids:
                for j, a in enumerate(a_ids[:len(ids) - len(p_ids) + 1]):
                    output.logits[row, len(p_ids) - 1 + j, a] += 1e4
        return output

    model.register_forward_hook(steer, with_kwargs=True)
    almost = " Paris!"
    assert tok(almost, add_special_tokens=False)["input_ids"][:-1] == a_ids[:-1] and len(a_ids) > 2
    assert cloze_correct(model, tok, prompt, answer)
    assert not cloze_correct(model, tok, prompt, almost)
    assert not cloze_correct(model, tok, prompt, " London.")
    items = [{"prompt": prompt, "answer": a} for a in (answer, almost, " London.")]
    assert cloze_accuracy(model, tok, items) == pytest.approx(1 / 3)
    # scored in padded batches of different lengths, each item's result is the one it gets alone
    items += [{"prompt": "Water", "answer": " boils."}, {"prompt": "A much longer prompt about a city in Europe:", "answer": " Rome"}]
    alone = [cloze_results(model, tok, [it])[0] for it in items]
    assert cloze_results(model, tok, items, batch_size=4) == alone and alone[:3] == [True, False, False]
    # what greedy decoding writes: the answer; " Paris." where " Paris!" was asked (wrong at its last
    # token); where " London." was asked, " Paris." up to the first token that differs from London's
    london = tok(" London.", add_special_tokens=False)["input_ids"]
    first_wrong = next(j for j, (a, b) in enumerate(zip(a_ids, london)) if a != b)
    writes = [a["writes"] for a in cloze_answers(model, tok, items[:3])]
    assert writes == [answer, answer, tok.decode(a_ids[:first_wrong + 1])]


def test_lost_facts_lists_what_each_run_writes_instead():
    probes = F.ForgettingProbes(domain_eval=[], knowledge=[{"prompt": f"q{i}", "answer": f" a{i}"} for i in range(4)],
                                general_eval=[], senses=[], max_length=8)

    def run(*wrong, base_wrong=()):
        return {"knowledge_answers": [{"correct": i not in wrong and i not in base_wrong,
                                       "writes": f" x{i}" if i in wrong or i in base_wrong else f" a{i}"}
                                      for i in range(4)]}

    before = run(base_wrong=(3,))
    table = F.lost_facts(probes, before, {"hard": run(1, 3), "replay": run(1, 2)})
    assert list(table.columns) == ["prompt", "answer", "hard", "replay"]
    assert table.to_dict("records") == [{"prompt": "q1", "answer": " a1", "hard": " x1", "replay": " x1"},
                                        {"prompt": "q2", "answer": " a2", "hard": "", "replay": " x2"}]


@pytest.mark.parametrize("share", [0.0, 0.25, 0.5, 0.75])
def test_replay_mixing_proportions(share):
    domain = [{"text": f"d{i}"} for i in range(40)]
    general = [{"text": f"g{i}"} for i in range(100)]
    mixed = F.mix_replay(domain, general, share, seed=1)
    kinds = Counter(r["text"][0] for r in mixed)
    assert len(mixed) == 40 and kinds["g"] == round(share * 40)
    assert len({r["text"] for r in mixed if r["text"][0] == "g"}) == kinds["g"]  # no repeats when enough


def test_replay_bad_share_and_small_pool():
    with pytest.raises(ValueError, match="share"):
        F.mix_replay([{"text": "a"}], [{"text": "b"}], 1.0)
    mixed = F.mix_replay([{"text": "d"}] * 10, [{"text": "g"}], 0.5)
    assert sum(r["text"] == "g" for r in mixed) == 5  # drawn with replacement from a small pool


def test_probes_are_disjoint_and_fixed():
    probes, domain_train, pool = F.forgetting_probes(n_domain_eval=5, n_knowledge=10, n_general_eval=7)
    again, _, _ = F.forgetting_probes(n_domain_eval=5, n_knowledge=10, n_general_eval=7)
    assert probes.to_dict() == again.to_dict()
    assert not set(probes.domain_eval) & {r["text"] for r in domain_train}
    assert not set(probes.general_eval) & {r["text"] for r in pool}
    assert len(probes.knowledge) == 10 and {p["word"] for p in probes.senses} == {"function"}
    assert {p["sense"] for p in probes.senses} == {"code", "social", "mathematical"}
    with pytest.raises(ValueError, match="n_knowledge"):
        F.forgetting_probes(n_knowledge=0)


def _toy_probes(tok_text):
    return F.ForgettingProbes(
        domain_eval=["def add(a, b):\n    return a + b"], general_eval=["The quick brown fox jumps."],
        knowledge=[{"prompt": "The capital of France is", "answer": " Paris"}],
        senses=[{"word": "function", "sense": "code", "prompt": "The function", "continuation": " add"},
                {"word": "function", "sense": "social", "prompt": "The function", "continuation": " hall"},
                {"word": "function", "sense": "social", "prompt": "The guests left the function", "continuation": " at one"}],
        max_length=32)


def test_measure_compare_and_sense_shift(toy):
    model, tok = toy
    probes = _toy_probes(None)
    m = F.measure(model, tok, probes)
    assert m["domain_loss"] == pytest.approx(math.log(m["domain_ppl"]))
    assert m["general_ppl"] == pytest.approx(perplexity(model, tok, probes.general_eval, 32))
    assert len(m["senses"]) == 3
    worse = {**m, "domain_loss": m["domain_loss"] - 0.5, "knowledge_acc": m["knowledge_acc"],
             "general_ppl": m["general_ppl"] * 1.1}
    d = F.compare(m, worse)
    assert d["domain_gain"] == pytest.approx(0.5) and d["general_ppl_change"] == pytest.approx(0.1)
    shifted = {"senses": [{**s, "logprob": s["logprob"] - 1.0} for s in m["senses"]]}
    table = F.sense_shift(m, shifted)
    assert set(table["context"]) == {"neutral prompt", "sense-specific prompt"}
    assert all(table["change"].round(6) == -1.0)
    assert F.neutral_winners(m).index.tolist() == ["The function"]
    assert m["knowledge_acc"] == sum(a["correct"] for a in m["knowledge_answers"]) and len(m["knowledge_answers"]) == 1
    with pytest.raises(ValueError, match="knowledge is empty"):
        F.measure(model, tok, F.ForgettingProbes(**{**probes.to_dict(), "knowledge": []}))


def test_matched_comparison_interpolates_the_full_ft_frontier():
    full = [{"domain_gain": 0.0, "knowledge_drop": 0.0, "general_ppl_change": 0.0, "learning_rate": 1e-5},
            {"domain_gain": 1.0, "knowledge_drop": 0.2, "general_ppl_change": 0.4, "learning_rate": 1e-4}]
    lora = {"label": "lora", "domain_gain": 0.5, "knowledge_drop": 0.05, "general_ppl_change": 0.1}
    m = F.matched_comparison(full, lora)
    assert m["inside"] and m["full_knowledge_drop"] == pytest.approx(0.1)
    assert m["full_general_ppl_change"] == pytest.approx(0.2)
    assert not F.matched_comparison(full, {**lora, "domain_gain": 2.0})["inside"]
    fig = F.frontier_figure([{**r, "method": "full"} for r in full] + [{**lora, "method": "lora", "learning_rate": 1e-3}])
    assert len(fig.data) == 4 and "1e-05" in fig.layout.title.text


def test_forgetting_lab_runs_and_redraws(toy, toy_text):
    from labkit.toy import toy_model

    model, tok = toy
    probes = _toy_probes(None)
    before = F.measure(model, tok, probes)
    lab = F.ForgettingLab(lambda: toy_model(seed=0), toy_text, probes, before, replay_pool=toy_text[:2],
                          learning_rate=1e-3, steps=2, batch_size=4, max_length=32)
    lab.replay.value = 0.5
    lab.lr.value = 1e-2
    assert lab.config()["learning_rate"] == pytest.approx(1e-2) and lab.config()["replay_share"] == 0.5
    row = lab.run()
    assert row["replay_share"] == 0.5 and row["config"]["learning_rate"] == pytest.approx(1e-2)
    assert len(lab.figure.data) == 2 and "replay" in lab.figure.data[1].name
    assert {"domain_gain", "knowledge_drop", "general_ppl_change"} <= set(row)
    import json
    json.dumps(row)  # results carry their config and are serialisable


def test_knowledge_verdict_follows_the_primary_measure_and_the_sample_size():
    """Issue #22: replay lost 35 points against 17.5 without it, and the notebook said "less
    damage" (judged by perplexity); one item decided "LoRA forgets less". Now the knowledge probe
    decides, and a difference inside the noise band of n items is called that."""
    from labkit.forgetting import knowledge_sentence, knowledge_verdict

    plain = {"knowledge_acc": 0.625, "knowledge_drop": 0.175}
    replay = {"knowledge_acc": 0.45, "knowledge_drop": 0.35}
    assert knowledge_verdict(replay, plain, 40)["verdict"] == "within noise"   # ±21 points on 40 items
    assert knowledge_verdict(replay, plain, 400)["verdict"] == "more"
    assert knowledge_verdict(plain, replay, 400)["verdict"] == "less"
    one_item = knowledge_verdict({"knowledge_acc": 0.0, "knowledge_drop": 1.0},
                                 {"knowledge_acc": 1.0, "knowledge_drop": 0.0}, 1)
    assert one_item["verdict"] == "within noise"
    line = knowledge_sentence("replay", replay, plain, 400)
    assert "MORE forgetting" in line and "35 points vs 18" in line and "400 items" in line
