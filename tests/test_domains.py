"""Domain corpora, per-domain perplexity, sense shares and the pick-a-domain widget."""
import math

import pytest

from labkit import domains


def test_domain_split_is_deterministic_disjoint_and_complete():
    for d in domains.DOMAINS:
        train, held = domains.domain_split(d, heldout=10, seed=1)
        assert len(held) == 10 and not set(train) & set(held)
        assert sorted(train + held) == sorted(domains.load_domain(d))
        assert domains.domain_split(d, heldout=10, seed=1)[1] == held
    with pytest.raises(ValueError, match="domain='finance'"):
        domains.load_domain("finance")
    with pytest.raises(ValueError, match="heldout=0"):
        domains.domain_split("legal", heldout=0)


def test_each_corpus_uses_its_word_and_probes_cover_every_domain():
    for d, word in domains.DOMAINS.items():
        assert sum(word in t.lower() for t in domains.load_domain(d)) >= 50
        probes = domains.load_probes(d)
        assert {p["word"] for p in probes} == {word}
        assert domains.TARGET_SENSE[d] in {p["sense"] for p in probes}


def test_sense_shares_sum_to_one_per_shared_prompt(toy):
    model, tok = toy
    table = domains.sense_table(model, tok, domains.load_probes("medical"))
    shared = table.dropna(subset=["share"])
    assert len(shared) > 0 and table["share"].isna().any()  # sense-specific prompts have no share
    for _, group in shared.groupby("prompt"):
        assert math.isclose(group["share"].sum(), 1.0, rel_tol=1e-6)
    cmp = domains.compare_senses(table, table)
    assert set(cmp["sense"]) == {"medical", "electrical"} and (cmp["share_change"].abs() < 1e-12).all()


def test_domain_perplexities_on_the_toy_model(toy):
    model, tok = toy
    from labkit.predictions import perplexity

    texts = {"code": ["def add(a, b):\n    return a + b"], "general": ["The quick brown fox jumps."]}
    ppl = domains.domain_perplexities(model, tok, texts)
    assert ppl == {d: pytest.approx(perplexity(model, tok, t, max_length=128), rel=1e-6) for d, t in texts.items()}
    assert ppl["code"] != pytest.approx(ppl["general"])   # each domain scored on its own texts


def _fake_table(share_medical):
    import pandas as pd

    rows = []
    for word, senses, share in [("discharge", ("medical", "electrical"), share_medical),
                                ("motion", ("legal", "physical"), 0.5)]:
        rows += [{"word": word, "sense": senses[0], "prompt": word, "continuation": " a",
                  "logprob": math.log(share), "share": share},
                 {"word": word, "sense": senses[1], "prompt": word, "continuation": " b",
                  "logprob": math.log(1 - share), "share": 1 - share}]
    return pd.DataFrame(rows)


def test_probe_explorer_redraws_when_the_domain_changes():
    results = {"medical": {"before": _fake_table(0.3), "after": _fake_table(0.8),
                           "perplexity_before": 20.0, "perplexity_after": 9.0},
               "legal": {"before": _fake_table(0.3), "after": _fake_table(0.3)}}
    ex = domains.probe_explorer(results)
    after = dict(zip(ex.figure.data[1].x, ex.figure.data[1].y))
    assert after["discharge: medical"] == pytest.approx(0.8)
    assert "30% → 80%" in ex.figure.layout.title.text and "20.0 → 9.0" in ex.figure.layout.title.text
    ex.domain.value = "legal"
    after = dict(zip(ex.figure.data[1].x, ex.figure.data[1].y))
    assert after["discharge: medical"] == pytest.approx(0.3)
    assert ex.figure.layout.title.text.startswith("After tuning on legal")
    with pytest.raises(ValueError, match="lacks"):
        domains.probe_explorer({"code": {"before": _fake_table(0.5)}})


def test_sense_shift_pairs_the_shared_prompts_and_bands_the_change():
    """The change in a sense's share is read prompt by prompt: prompts that agree give a narrow
    band, and a prompt written for one sense only (share NaN) is left out."""
    import pandas as pd
    import pytest

    from labkit.domains import sense_shift

    def table(shares):
        rows = [{"word": "w", "sense": "a", "prompt": p, "share": s} for p, s in shares.items()]
        rows += [{"word": "w", "sense": "b", "prompt": p, "share": 1 - s} for p, s in shares.items()]
        rows.append({"word": "w", "sense": "a", "prompt": "one sense only", "share": float("nan")})
        return pd.DataFrame(rows)

    before = table({"p1": 0.2, "p2": 0.4, "p3": 0.3})
    moved = sense_shift(before, table({"p1": 0.6, "p2": 0.8, "p3": 0.7}), "w", "a")
    assert moved["prompts"] == 3 and moved["change"] == pytest.approx(0.4) and moved["noise"] == pytest.approx(0.0)
    assert moved["share before"] == pytest.approx(0.3) and moved["share after"] == pytest.approx(0.7)
    mixed = sense_shift(before, table({"p1": 0.6, "p2": 0.0, "p3": 0.3}), "w", "a")
    assert abs(mixed["change"]) < mixed["noise"]
    with pytest.raises(ValueError, match="no prompt"):
        sense_shift(before, before, "w", "c")
