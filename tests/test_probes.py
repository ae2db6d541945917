"""labkit.probes: probability_shift (the ratio and band notebook 02's 'function' claims are judged by)
and the batched continuation log-probabilities behind the sense probes (04, 07)."""
import math

import pandas as pd
import pytest

from labkit.probes import continuation_logprobs, probability_shift, sense_table


def table(probs: dict) -> pd.DataFrame:
    return pd.DataFrame([{"context": c, "target": t, "probability": p} for (c, t), p in probs.items()])


def test_geometric_mean_of_the_targets_rows_only():
    before = table({("a", " ("): 0.01, ("b", " ("): 0.02, ("a", " of"): 0.5, ("b", " of"): 0.5})
    after = table({("a", " ("): 0.04, ("b", " ("): 0.02, ("a", " of"): 0.1, ("b", " of"): 0.9})
    shift = probability_shift(before, after, [" ("])
    assert shift["ratio"] == pytest.approx(2.0)          # x4 and x1: geometric mean 2
    assert shift["rows"] == 2
    assert shift["p before"] == pytest.approx(0.015) and shift["p after"] == pytest.approx(0.03)
    # two standard errors of log 4 and log 1: 2 * sd / sqrt(2)
    assert shift["noise"] == pytest.approx(2 * (math.log(4) / math.sqrt(2)) / math.sqrt(2))


def test_contexts_that_agree_give_a_narrow_band_and_disagreeing_ones_a_wide_one():
    before = table({(c, " of"): 0.1 for c in "abcd"})
    agree = probability_shift(before, table({(c, " of"): 0.05 for c in "abcd"}), [" of"])
    split = probability_shift(before, table({("a", " of"): 0.01, ("b", " of"): 0.2, ("c", " of"): 0.01,
                                             ("d", " of"): 0.2}), [" of"])
    assert agree["ratio"] == pytest.approx(0.5) and agree["noise"] == pytest.approx(0.0)
    assert abs(math.log(split["ratio"])) < split["noise"]   # within noise: the contexts disagree


def test_one_row_has_no_band_and_mismatched_tables_are_refused():
    before = table({("a", " of"): 0.1, ("a", " ("): 0.1})
    assert probability_shift(before, before, [" of"])["noise"] == math.inf
    with pytest.raises(ValueError, match="none of"):
        probability_shift(before, before, [" {"])
    with pytest.raises(ValueError, match="same contexts"):
        probability_shift(before, table({("b", " of"): 0.1, ("b", " ("): 0.1}), [" of"])


def test_batched_continuation_logprobs_equal_one_pair_at_a_time(toy):
    """Pairs of different lengths share a padded batch; each must score as it does alone."""
    from labkit.predictions import continuation_logprob

    model, tok = toy
    pairs = [("The function", " of the heart"), ("A function returns", " a value"), ("x", " y z w v"),
             ("The discharge summary said the patient", " went home"), ("function", " (")]
    alone = [continuation_logprob(model, tok, p, c) for p, c in pairs]
    assert continuation_logprobs(model, tok, pairs, batch_size=3) == pytest.approx(alone, abs=1e-4)
    table = sense_table(model, tok, [{"word": "function", "sense": s, "prompt": p, "continuation": c}
                                     for s, (p, c) in zip("abcde", pairs)])
    assert list(table["sense"]) == list("abcde") and table["logprob"].tolist() == pytest.approx(alone, abs=1e-4)
    with pytest.raises(ValueError, match="pair 1"):
        continuation_logprobs(model, tok, [("a", " b"), ("a", "")])
