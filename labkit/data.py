"""Datasets in the formats the lab uses, with TRL's column conventions.

======================  =========================================  ==============================
format                  one JSONL line                             used for
======================  =========================================  ==============================
``text``                ``{"text": ...}``                          continued pretraining
``messages``            ``{"messages": [{"role", "content"}...]}`` chat / instruction tuning
``prompt_completion``   ``{"prompt": ..., "completion": ...}``     completion-only tuning
``preference``          ``{"prompt", "chosen", "rejected"}``       reward models, DPO
``cloze``               ``{"prompt": ..., "answer": ...}``         knowledge probes
``sense``               ``{"word", "sense", "prompt", "continuation"}``  word-sense probes
======================  =========================================  ==============================

Every loader checks every line before returning, and a bad line gets a ``ValueError`` that
names the file and the line: nothing is trained on half-checked data. Extra fields (``split``,
``task``, ...) are kept.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from . import files

REQUIRED_FIELDS = {
    "text": ("text",),
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "preference": ("prompt", "chosen", "rejected"),
    "cloze": ("prompt", "answer"),
    "sense": ("word", "sense", "prompt", "continuation"),
}
ROLES = ("system", "user", "assistant")


def data_dir() -> Path:
    """The lab's ``data/`` folder (``LABKIT_DATA`` overrides it)."""
    return Path(os.environ.get("LABKIT_DATA", Path(__file__).resolve().parent.parent / "data"))


def data_path(name: str | os.PathLike) -> Path:
    """A file in ``data/`` by its relative name (absolute paths pass through)."""
    p = Path(name)
    return p if p.is_absolute() or p.exists() else data_dir() / p


def detect_format(record: dict) -> str:
    """The most specific format whose required fields are all present."""
    for fmt in ("preference", "sense", "messages", "prompt_completion", "cloze", "text"):
        if all(f in record for f in REQUIRED_FIELDS[fmt]):
            return fmt
    raise ValueError(f"no known format has fields {sorted(record)}; formats: "
                     + ", ".join(f"{k}={list(v)}" for k, v in REQUIRED_FIELDS.items()))


def _check_messages(messages) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "field 'messages' must be a non-empty list"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) - {"role", "content"} or "role" not in m or "content" not in m:
            return f"messages[{i}] must be an object with exactly 'role' and 'content'"
        if m["role"] not in ROLES:
            return f"messages[{i}].role is {m['role']!r}; expected one of {ROLES}"
        if not isinstance(m["content"], str) or not m["content"].strip():
            return f"messages[{i}].content must be a non-empty string"
    if messages[-1]["role"] != "assistant":
        return "the last message must be the assistant's (the response to learn)"
    return None


def check_record(record, fmt: str) -> str | None:
    """Why ``record`` is not valid in format ``fmt``, or None if it is."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    for field in REQUIRED_FIELDS[fmt]:
        if field not in record:
            return f"missing field {field!r}"
        if field == "messages":
            problem = _check_messages(record[field])
            if problem:
                return problem
        elif not isinstance(record[field], str):
            return f"field {field!r} must be a string, got {type(record[field]).__name__}"
        elif not record[field].strip():
            return f"field {field!r} is empty"
    return None


def read_jsonl(path, format: str | None = None) -> list[dict]:
    """Read and validate every line of a JSONL file; return the records as dicts."""
    path = data_path(path)
    if format is not None and format not in REQUIRED_FIELDS:
        raise ValueError(f"format={format!r} is not one of {list(REQUIRED_FIELDS)}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue  # a trailing blank line is harmless
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if format is None:
                if not isinstance(record, dict):
                    raise ValueError(f"{path}:{lineno}: expected a JSON object")
                try:
                    format = detect_format(record)
                except ValueError as e:
                    raise ValueError(f"{path}:{lineno}: {e}") from None
            problem = check_record(record, format)
            if problem:
                raise ValueError(f"{path}:{lineno}: {problem} (format {format!r})")
            records.append(record)
    if not records:
        raise ValueError(f"{path}: the file is empty")
    return records


def load_jsonl(path, format: str | None = None, split: str | None = None):
    """Load a validated JSONL file as a ``datasets.Dataset``.

    ``split`` keeps only records whose ``split`` field equals it (e.g. ``"train"``).
    """
    from datasets import Dataset

    records = read_jsonl(path, format)
    if split is not None:
        records = [r for r in records if r.get("split") == split]
        if not records:
            raise ValueError(f"{data_path(path)}: no records with split={split!r}")
    return Dataset.from_list(records)


def write_jsonl(path, records, format: str | None = None) -> Path:
    """Validate records and write them atomically (``labkit.files``: a crash never leaves half
    a file, and the earlier file stays until the new one is complete)."""
    path, records = Path(path), list(records)
    for i, r in enumerate(records, start=1):
        fmt = format or detect_format(r)
        problem = check_record(r, fmt)
        if problem:
            raise ValueError(f"record {i}: {problem} (format {fmt!r}); nothing was written to {path}")
    return files.write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def record_key(record: dict) -> str:
    """The text that identifies a record for duplicate checks (the input side)."""
    if "messages" in record:
        return json.dumps([m for m in record["messages"] if m["role"] != "assistant"], sort_keys=True)
    for field in ("prompt", "text"):
        if field in record:
            return record[field]
    return json.dumps(record, sort_keys=True)


def normalise(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: for near-duplicate checks."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def duplicate_report(records, key=record_key, near: bool = False) -> list[tuple[int, int]]:
    """Pairs ``(first, duplicate)`` of 1-based record numbers with the same key.

    With ``near=True`` keys are compared after :func:`normalise` (case, punctuation, spacing)."""
    seen: dict[str, int] = {}
    pairs = []
    for i, r in enumerate(records, start=1):
        k = key(r)
        if near:
            k = normalise(k)
        if k in seen:
            pairs.append((seen[k], i))
        else:
            seen[k] = i
    return pairs


def train_val_split(dataset, val_fraction: float = 0.1, seed: int = 0):
    """A deterministic split: the same seed always gives the same validation rows."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if len(dataset) < 2:
        raise ValueError(f"need at least 2 records to split, got {len(dataset)}")
    parts = dataset.train_test_split(test_size=val_fraction, seed=seed, shuffle=True)
    return parts["train"], parts["test"]
