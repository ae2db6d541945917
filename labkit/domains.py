"""Domain adaptation: the lab's domain corpora, per-domain perplexity, and word-sense probes.

Each corpus in ``data/domains/`` uses one ambiguous word in one sense only:

    medical  "discharge"  (a patient leaving hospital, not an electrical discharge)
    legal    "motion"     (a request to a court, not movement)
    code     "function"   (a function in a program, not a social event or f(x))

Continued pretraining on a corpus should move probability towards that sense.
:func:`sense_table` measures it: for a prompt shared by several senses ("The report described
the discharge"), the *share* of each sense is its continuation's probability divided by the sum
over the senses' continuations, so the shares of one prompt add up to 1.
"""
from __future__ import annotations

import math
import random

from .data import read_jsonl
from .plots import LabFigure, Panel, lab_layout

DOMAINS = {"medical": "discharge", "legal": "motion", "code": "function"}
TARGET_SENSE = {"medical": "medical", "legal": "legal", "code": "code"}


def _check_domain(domain: str) -> str:
    if domain not in DOMAINS:
        raise ValueError(f"domain={domain!r}: choose one of {list(DOMAINS)}")
    return domain


def load_domain(domain: str) -> list[str]:
    """The texts of one domain corpus (``data/domains/<domain>.jsonl``)."""
    return [r["text"] for r in read_jsonl(f"domains/{_check_domain(domain)}.jsonl", "text")]


def domain_split(domain: str, heldout: int = 20, seed: int = 0) -> tuple[list[str], list[str]]:
    """``(train_texts, heldout_texts)``: the same ``heldout`` texts for a given seed, never
    trained on, so perplexity measures the domain rather than memorised paragraphs."""
    texts = load_domain(domain)
    if not 1 <= heldout < len(texts):
        raise ValueError(f"heldout={heldout}: must be between 1 and {len(texts) - 1}")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    held = sorted(order[:heldout])
    held_set = set(held)
    return [t for i, t in enumerate(texts) if i not in held_set], [texts[i] for i in held]


def load_probes(domain: str | None = None) -> list[dict]:
    """Word-sense probes (``data/domains/probes.jsonl``), all or one domain's word."""
    probes = read_jsonl("domains/probes.jsonl", "sense")
    if domain is None:
        return probes
    return [p for p in probes if p["domain"] == _check_domain(domain)]


def sense_table(model, tokenizer, probes):
    """One row per probe: ``logprob`` = log P(continuation | prompt), and ``share`` = that
    continuation's probability as a fraction of all senses' continuations after the same prompt
    (NaN for prompts written for one sense only)."""
    import pandas as pd

    from .probes import sense_table as logprob_table

    table = logprob_table(model, tokenizer, probes)
    table["share"] = float("nan")
    for _, group in table.groupby("prompt"):
        if group["sense"].nunique() > 1:
            top = group["logprob"].max()
            weights = [math.exp(lp - top) for lp in group["logprob"]]
            total = sum(weights)
            table.loc[group.index, "share"] = [w / total for w in weights]
    return pd.DataFrame(table)


def sense_summary(table):
    """Per word and sense: mean share over the shared prompts, mean log-probability over all."""
    return (table.groupby(["word", "sense"], sort=False)
            .agg(share=("share", "mean"), logprob=("logprob", "mean"), probes=("prompt", "size"))
            .reset_index())


def compare_senses(before, after):
    """Before/after per word and sense (tables from :func:`sense_table`), with the changes."""
    b, a = sense_summary(before), sense_summary(after)
    merged = b.merge(a, on=["word", "sense", "probes"], suffixes=("_before", "_after"))
    merged["share_change"] = merged["share_after"] - merged["share_before"]
    merged["logprob_change"] = merged["logprob_after"] - merged["logprob_before"]
    return merged


def sense_shift(before, after, word: str, sense: str) -> dict:
    """How far ``word`` moved towards ``sense`` (tables from :func:`sense_table`, before and after):
    that sense's mean share over the prompts written for several senses, before and after, the
    change, and its noise (``claims.paired_noise`` over those prompts: about 95% of the change
    chance alone would make with this many prompts)."""
    from .claims import paired_noise

    def shares(table):
        rows = table[(table["word"] == word) & (table["sense"] == sense) & table["share"].notna()]
        return rows.set_index("prompt")["share"]

    b, a = shares(before), shares(after)
    if b.empty:
        raise ValueError(f"no prompt shared by several senses has word {word!r} with sense {sense!r}")
    a = a.reindex(b.index)
    if a.isna().any():
        raise ValueError("before and after must score the same probes")
    return {"share before": float(b.mean()), "share after": float(a.mean()), "change": float((a - b).mean()),
            "noise": paired_noise(list(a), list(b)), "prompts": len(b)}


def domain_perplexities(model, tokenizer, texts_by_domain: dict, max_length: int = 128,
                        batch_size: int = 8) -> dict:
    """Perplexity of ``model`` on each domain's texts: ``{"medical": 12.3, ...}``."""
    from .predictions import perplexity

    return {d: perplexity(model, tokenizer, texts, max_length=max_length, batch_size=batch_size)
            for d, texts in texts_by_domain.items()}


def as_text_records(texts: list[str]) -> list[dict]:
    """Plain texts as ``text`` records, the format for continued pretraining."""
    return [{"text": t} for t in texts]


# --- the widget -------------------------------------------------------------------------------

class ProbeExplorer:
    """Pick a domain; see every word's sense shares before and after tuning on that domain.

    ``results`` maps a domain to ``{"before": sense_table, "after": sense_table,
    "perplexity_before": float, "perplexity_after": float}`` (computed beforehand, so a change
    of domain only redraws). ``explorer.domain`` is the dropdown, ``explorer.figure`` the figure,
    ``explorer.widget`` both together."""

    def __init__(self, results: dict, colors: dict | None = None):
        import ipywidgets as widgets

        from .plots import COLORS

        if not results:
            raise ValueError("results is empty: train at least one domain first")
        for d, r in results.items():
            _check_domain(d)
            missing = {"before", "after"} - set(r)
            if missing:
                raise ValueError(f"results[{d!r}] lacks {sorted(missing)}")
        self.results = results
        colors = colors or {"before": COLORS["base"], "after": COLORS["lora"]}
        self.domain = widgets.Dropdown(options=list(results), value=next(iter(results)),
                                       description="domain")
        self.figure = LabFigure()
        self.figure.add_bar(name="before (base model)", marker_color=colors["before"])
        self.figure.add_bar(name="after domain tuning", marker_color=colors["after"])
        lab_layout(self.figure, 420, top=70, bottom=60, legend_below=-0.3, barmode="group", yaxis_range=[0, 1],
                   xaxis_title="word: sense (shared prompts only)", yaxis_title="share of probability among the senses")
        self.domain.observe(lambda change: self.show(change["new"]), names="value")
        self.widget = Panel([self.domain, self.figure])
        self.show(self.domain.value)

    def show(self, domain: str):
        r = self.results[_check_domain(domain)]
        table = compare_senses(r["before"], r["after"]).dropna(subset=["share_before"])
        labels = [f"{w}: {s}" for w, s in zip(table["word"], table["sense"])]
        word, sense = DOMAINS[domain], TARGET_SENSE[domain]
        row = table[(table["word"] == word) & (table["sense"] == sense)].iloc[0]
        title = (f"After tuning on {domain}: '{word}' ({sense} sense) {row['share_before']:.0%} → "
                 f"{row['share_after']:.0%}")
        if "perplexity_before" in r and "perplexity_after" in r:
            title += f"; {domain} perplexity {r['perplexity_before']:.1f} → {r['perplexity_after']:.1f}"
        with self.figure.batch_update():
            self.figure.data[0].x, self.figure.data[0].y = labels, list(table["share_before"])
            self.figure.data[1].x, self.figure.data[1].y = labels, list(table["share_after"])
            self.figure.layout.title = title
        return self.figure


def probe_explorer(results: dict) -> ProbeExplorer:
    """Build the pick-a-domain widget (see :class:`ProbeExplorer`); display ``.widget``."""
    return ProbeExplorer(results)
