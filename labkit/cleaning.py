"""Clean a dataset before training, one step at a time, each step saying what it removed and why.

    kept, report = exact_dedup(records)
    kept, report = near_dedup(kept, threshold=0.8)
    kept, report = filter_length(kept, tok, min_tokens=8, max_tokens=512)
    kept, reports = clean(records, tok)          # all the steps above plus the format check
    reports_frame(reports)                        # one row per removed record

Every step takes a list of records (dicts in the lab's formats) and returns ``(kept, StepReport)``.
The report keeps the index of each removed record in the step's *input* and the reason.

``inject_noise`` does the opposite, on purpose: it spoils a share of the responses (garbled
text or another record's answer) for the quality-against-quantity experiment of notebook 11.
"""
from __future__ import annotations

import copy
import json
import random
from dataclasses import dataclass, field

from .data import check_record, detect_format, normalise


@dataclass
class StepReport:
    """What one cleaning step did: how many records came in, which ones it removed and why."""
    step: str
    records_in: int
    removed: list[tuple[int, str]] = field(default_factory=list)  # (index in the input, reason)

    @property
    def kept(self) -> int:
        return self.records_in - len(self.removed)

    def summary(self) -> str:
        return f"{self.step}: kept {self.kept} of {self.records_in}, removed {len(self.removed)}"

    def to_dict(self) -> dict:
        return {"step": self.step, "records_in": self.records_in, "kept": self.kept,
                "removed": [list(r) for r in self.removed]}


def record_text(record: dict) -> str:
    """All the text of a record (prompt and response), for duplicate and length checks."""
    if "messages" in record:
        return "\n".join(m.get("content", "") for m in record["messages"] if isinstance(m, dict))
    if "prompt" in record and "completion" in record:
        return f"{record['prompt']}\n{record['completion']}"
    if "text" in record:
        return record["text"]
    return json.dumps(record, sort_keys=True)


def _split(records, keep_flags_reasons, step: str):
    kept, report = [], StepReport(step, len(records))
    for i, (r, reason) in enumerate(zip(records, keep_flags_reasons)):
        if reason is None:
            kept.append(r)
        else:
            report.removed.append((i, reason))
    return kept, report


def exact_dedup(records) -> tuple[list[dict], StepReport]:
    """Remove records whose whole text (prompt and response) repeats an earlier record exactly."""
    seen: dict[str, int] = {}
    reasons = []
    for i, r in enumerate(records):
        key = record_text(r)
        reasons.append(f"exact duplicate of record {seen[key]}" if key in seen else None)
        seen.setdefault(key, i)
    return _split(records, reasons, "exact duplicates")


def shingles(text: str, n: int = 3) -> set:
    """The set of word n-grams of the normalised text (case, punctuation and spacing ignored)."""
    words = normalise(text).split()
    if len(words) < n:
        return {" ".join(words)}
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def near_dedup(records, threshold: float = 0.8, n: int = 3) -> tuple[list[dict], StepReport]:
    """Remove records whose word-3-gram overlap (Jaccard similarity) with an earlier kept record
    is at least ``threshold``: same text with different case, punctuation, spacing or a few words
    changed. Pairwise, so O(n^2): fine for thousands of records; use MinHash beyond that."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold={threshold!r}: must be in (0, 1]")
    kept_sets: list[tuple[int, set]] = []
    reasons = []
    for i, r in enumerate(records):
        s = shingles(record_text(r), n)
        match = next(((j, sim) for j, other in kept_sets if (sim := jaccard(s, other)) >= threshold), None)
        if match:
            reasons.append(f"near duplicate of record {match[0]} (similarity {match[1]:.2f})")
        else:
            reasons.append(None)
            kept_sets.append((i, s))
    return _split(records, reasons, f"near duplicates (>= {threshold:.2f})")


def count_tokens(text: str, tokenizer=None) -> int:
    """Tokens with the tokenizer, or words without one."""
    if tokenizer is None:
        return len(text.split())
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def filter_length(records, tokenizer=None, min_tokens: int = 1, max_tokens: int = 512
                  ) -> tuple[list[dict], StepReport]:
    """Remove records shorter than ``min_tokens`` or longer than ``max_tokens`` (too long would be
    cut off in training: the model would learn answers that stop mid-sentence)."""
    if min_tokens < 0 or max_tokens < min_tokens:
        raise ValueError(f"need 0 <= min_tokens <= max_tokens, got {min_tokens}, {max_tokens}")
    unit = "words" if tokenizer is None else "tokens"
    reasons = []
    for r in records:
        n = count_tokens(record_text(r), tokenizer)
        if n < min_tokens:
            reasons.append(f"too short: {n} {unit} < {min_tokens}")
        elif n > max_tokens:
            reasons.append(f"too long: {n} {unit} > {max_tokens}")
        else:
            reasons.append(None)
    return _split(records, reasons, f"length {min_tokens}-{max_tokens} {unit}")


def check_format(records, format: str | None = None) -> tuple[list[dict], StepReport]:
    """Remove records that are not valid in ``format`` (default: the first record's format):
    missing fields, empty content, unknown roles, a conversation that does not end with the
    assistant's reply."""
    reasons = []
    for r in records:
        try:
            fmt = format or detect_format(r)
            reasons.append(check_record(r, fmt))
        except (ValueError, TypeError, AttributeError) as e:
            reasons.append(str(e))
    return _split(records, reasons, f"format {format or 'auto'}")


def apply_chat_template(records, tokenizer) -> tuple[list[dict], StepReport]:
    """Add a ``text`` field: the conversation as the model will see it (its chat template).
    Records the template cannot render are removed with the template's error."""
    out, reasons = [], []
    for r in records:
        if "messages" not in r:
            reasons.append("no 'messages' field to apply the chat template to")
            out.append(r)
            continue
        try:
            text = tokenizer.apply_chat_template(r["messages"], tokenize=False)
            out.append({**r, "text": text})
            reasons.append(None)
        except Exception as e:  # jinja raises its own error types
            reasons.append(f"chat template failed: {e}")
            out.append(r)
    return _split(out, reasons, "chat template")


def clean(records, tokenizer=None, format: str | None = None, near_threshold: float = 0.8,
          min_tokens: int = 4, max_tokens: int = 512, template: bool = False):
    """The whole pipeline: format check, exact duplicates, near duplicates, length filter and,
    with ``template=True``, the chat template. Returns ``(kept, [StepReport, ...])``."""
    reports = []
    kept, rep = check_format(records, format)
    reports.append(rep)
    for step in (exact_dedup, lambda rs: near_dedup(rs, near_threshold),
                 lambda rs: filter_length(rs, tokenizer, min_tokens, max_tokens)):
        kept, rep = step(kept)
        reports.append(rep)
    if template:
        kept, rep = apply_chat_template(kept, tokenizer)
        reports.append(rep)
    return kept, reports


def reports_frame(reports):
    """One row per removed record: step, index (in that step's input) and reason."""
    import pandas as pd

    rows = [{"step": r.step, "index": i, "reason": why} for r in reports for i, why in r.removed]
    return pd.DataFrame(rows, columns=["step", "index", "reason"])


# --- noise, on purpose ------------------------------------------------------------------------

NOISE_KINDS = ("garbled", "wrong")


def garble(text: str, rng: random.Random) -> str:
    """Shuffle the words and drop a third of them: fluent-looking tokens, no meaning."""
    words = text.split()
    rng.shuffle(words)
    keep = words[: max(1, (2 * len(words)) // 3)]
    return " ".join(keep)


def _response(record):
    if "messages" in record:
        return record["messages"][-1]["content"]
    if "completion" in record:
        return record["completion"]
    raise ValueError("inject_noise needs 'messages' or 'prompt'/'completion' records")


def _with_response(record, text):
    r = copy.deepcopy(record)
    if "messages" in r:
        r["messages"][-1]["content"] = text
    else:
        r["completion"] = text
    return r


def inject_noise(records, rate: float, seed: int = 0, kinds=NOISE_KINDS) -> tuple[list[dict], StepReport]:
    """Spoil ``round(rate * len(records))`` responses, chosen with ``seed``: ``garbled`` shuffles
    and drops words; ``wrong`` puts in another record's answer. Returns the records (same order)
    and a report listing which were spoiled and how. The input is not changed."""
    if not 0 <= rate <= 1:
        raise ValueError(f"rate={rate!r}: must be between 0 and 1")
    bad = set(kinds) - set(NOISE_KINDS)
    if bad or not kinds:
        raise ValueError(f"kinds={kinds!r}: choose from {NOISE_KINDS}")
    rng = random.Random(seed)
    n = round(rate * len(records))
    chosen = sorted(rng.sample(range(len(records)), n))
    out = [copy.deepcopy(r) for r in records]
    report = StepReport(f"noise {rate:.0%}", len(records))
    for k, i in enumerate(chosen):
        kind = kinds[k % len(kinds)]
        if kind == "garbled" or len(records) < 2:
            out[i] = _with_response(records[i], garble(_response(records[i]), rng))
            report.removed.append((i, "garbled response"))
        else:
            j = rng.choice([x for x in range(len(records)) if x != i])
            out[i] = _with_response(records[i], _response(records[j]))
            report.removed.append((i, f"wrong response (record {j}'s answer)"))
    return out, report
