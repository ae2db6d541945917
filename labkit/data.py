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
``task``, ...) are kept, and :func:`extra_fields` lists them. Messages follow TRL: the roles
``system``, ``user``, ``assistant`` and ``tool``, and keys beyond ``role`` and ``content``
(``tool_calls``, ``name``, ...) kept; an assistant turn that calls a tool may have no text.

Your own data in another shape: :func:`load_table` reads a CSV, TSV, Parquet or JSON-lines file,
or a Hugging Face hub dataset, maps its columns to a format and runs the same checks (an error
names the file and the row).
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
ROLES = ("system", "user", "assistant", "tool")   # TRL's roles
MESSAGE_KEYS = ("role", "content")                  # others (tool_calls, name, ...) are kept
MAX_FIELD_CHARS = 200_000        # a field longer than this is a mistake here (the lab trains on <= 512 tokens)
MAX_LINE_BYTES = 8 * 2**20       # read no further into a line than this


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
        if not isinstance(m, dict) or "role" not in m:
            return f"messages[{i}] must be an object with a 'role' and a 'content'"
        if m["role"] not in ROLES:
            return f"messages[{i}].role is {m['role']!r}; expected one of {ROLES}"
        if m.get("content") in (None, "") and m["role"] == "assistant" and m.get("tool_calls"):
            continue  # a turn that only calls a tool has no text (TRL accepts it)
        if "content" not in m:
            return f"messages[{i}] has no 'content'"
        if problem := _check_text(f"messages[{i}].content", m["content"]):
            return problem
    if messages[-1]["role"] != "assistant":
        return "the last message must be the assistant's (the response to learn)"
    if not any(m["role"] == "user" for m in messages[:-1]):
        return "a conversation needs a user message before the assistant's reply"
    return None


def _check_text(field: str, value) -> str | None:
    if value is None:
        return f"field {field!r} is empty (null, or a blank cell)"
    if not isinstance(value, str):
        return f"field {field!r} must be a string, got {type(value).__name__}"
    if not value.strip():
        return f"field {field!r} is empty"
    if len(value) > MAX_FIELD_CHARS:
        return f"field {field!r} is {len(value):,} characters long; the lab's limit is {MAX_FIELD_CHARS:,}"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        return (f"field {field!r} holds a character that is not valid text (U+{ord(value[e.start]):04X} "
                f"at position {e.start}, half of a surrogate pair)")
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
        else:
            problem = _check_text(field, record[field])
        if problem:
            return problem
    if fmt == "preference" and record["chosen"].strip() == record["rejected"].strip():
        return "'chosen' and 'rejected' are the same text: there is nothing to prefer"
    return None


def check_records(records, name: str = "data", formats=None) -> str:
    """Check every record (a list of dicts or a ``datasets.Dataset``) as the file loaders do; a bad
    one raises ``ValueError("name[i]: why")`` (0-based, as Python counts a list). Returns the format.
    ``formats`` limits which formats are accepted."""
    fmt = None
    for i, record in enumerate(records):
        where = f"{name}[{i}]"
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a dict, got {type(record).__name__}")
        try:
            found = detect_format(record)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        if formats and found not in formats:
            raise ValueError(f"{where}: format {found!r} cannot be used here; use one of {list(formats)}")
        if fmt is not None and found != fmt:
            raise ValueError(f"{where}: format {found!r}, but the records before it are {fmt!r}")
        fmt = found
        problem = check_record(record, fmt)
        if problem:
            raise ValueError(f"{where}: {problem} (format {fmt!r})")
    if fmt is None:
        raise ValueError(f"{name} is empty")
    return fmt


def read_lines(path):
    """``(line number, text)`` for each line of a UTF-8 file; a file in another encoding, or a line
    too long to be data, raises ``ValueError`` naming the file and the line."""
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(0)
        if head.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise ValueError(f"{path}: the file is UTF-16; save it as UTF-8 (in most editors: Save As, "
                             "encoding UTF-8)")
        for lineno, raw in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 1), b""), start=1):
            if len(raw) > MAX_LINE_BYTES:
                raise ValueError(f"{path}:{lineno}: the line is longer than {MAX_LINE_BYTES // 2**20} MB; "
                                 "one record per line, each much shorter")
            try:
                yield lineno, raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at byte "
                                 f"{e.start + 1} of the line); save the file as UTF-8") from None


def read_jsonl(path, format: str | None = None) -> list[dict]:
    """Read and validate every line of a JSONL file; return the records as dicts."""
    path = data_path(path)
    if format is not None and format not in REQUIRED_FIELDS:
        raise ValueError(f"format={format!r} is not one of {list(REQUIRED_FIELDS)}")
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a .jsonl file in it")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    records = []
    for lineno, line in read_lines(path):
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
    records = read_jsonl(path, format)
    if split is not None:
        records = [r for r in records if r.get("split") == split]
        if not records:
            raise ValueError(f"{data_path(path)}: no records with split={split!r}")
    return to_dataset(records)


def to_dataset(records: list[dict]):
    """Records as a ``datasets.Dataset`` with every field any record has (``Dataset.from_list``
    keeps only the first record's fields and silently drops the others')."""
    from datasets import Dataset

    fields = list(dict.fromkeys(k for r in records for k in r))
    return Dataset.from_dict({k: [r.get(k) for r in records] for k in fields})


def extra_fields(records, format: str | None = None) -> dict[str, int]:
    """Fields beyond what ``format`` needs (``split`` aside), and message keys beyond ``role`` and
    ``content`` (as ``messages[].key``), each with the number of records that have it. They are
    kept; training uses only the format's fields (a chat template may read ``tool_calls``)."""
    counts: dict[str, int] = {}
    for r in records:
        fmt = format or detect_format(r)
        keys = {k for k in r if k not in REQUIRED_FIELDS[fmt] and k != "split"}
        if fmt == "messages":
            keys |= {f"messages[].{k}" for m in r["messages"] for k in m if k not in MESSAGE_KEYS}
        for k in keys:
            counts[k] = counts.get(k, 0) + 1
    return dict(sorted(counts.items()))


# --- your own data: CSV, TSV, Parquet, JSON lines, hub datasets ---------------------------------

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".jsonl", ".json")
CHAT_COLUMNS = ("system", "user", "assistant")   # columns={role: column} builds one conversation a row


def load_table(source, columns: dict[str, str] | None = None, format: str | None = None,
               split: str = "train", config: str | None = None, limit: int | None = None) -> list[dict]:
    """Rows of a table as records in one of the lab's formats, every row checked.

    source:  a ``.csv``, ``.tsv``, ``.parquet`` or ``.jsonl`` file (a path, or a name in ``data/``),
             or a Hugging Face hub dataset id such as ``"HuggingFaceTB/smoltalk"`` (read with
             ``datasets.load_dataset(source, config, split=split)``; needs a network or a cache).
    columns: the lab's field -> the table's column, e.g. ``{"prompt": "question", "completion":
             "answer"}``. With ``format="messages"`` the keys may be roles: ``{"system": ...,
             "user": "question", "assistant": "answer"}`` builds one conversation per row.
             Columns not named are kept as extra fields (see :func:`extra_fields`).
    limit:   read only the first ``limit`` rows.

    CSV cells are read as text (a blank cell is an empty field, never a number or NaN). A bad
    row raises ``ValueError`` naming the source and the row (1-based; in a CSV, row 1 is the
    first line under the header).
    """
    if format is not None and format not in REQUIRED_FIELDS:
        raise ValueError(f"format={format!r} is not one of {list(REQUIRED_FIELDS)}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit={limit!r}: give a positive number of rows, or None for all")
    rows, name = _read_table(source, split, config, limit)
    if not rows:
        raise ValueError(f"{name}: the table has no rows")
    records = [_map_columns(row, columns or {}, format, name, i) for i, row in enumerate(rows, start=1)]
    fmt = format
    for i, record in enumerate(records, start=1):
        where = f"{name}, row {i}"
        try:
            found = format or detect_format(record)
        except ValueError as e:
            raise ValueError(f"{where}: {e}; name the columns with columns={{field: column}}") from None
        if fmt is not None and found != fmt:
            raise ValueError(f"{where}: format {found!r}, but the rows before it are {fmt!r}")
        fmt = found
        if problem := check_record(record, fmt):
            raise ValueError(f"{where}: {problem} (format {fmt!r})")
    return records


def _read_table(source, split: str, config: str | None, limit: int | None) -> tuple[list[dict], str]:
    """The rows of ``source`` as plain dicts, and the name errors use for it."""
    path = data_path(source)
    if path.is_file() or Path(str(source)).suffix.lower() in TABLE_SUFFIXES:
        suffix = path.suffix.lower()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such data file")
        if suffix in (".csv", ".tsv"):
            import pandas as pd

            try:
                frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False,
                                    nrows=limit, encoding="utf-8-sig")
            except (UnicodeDecodeError, pd.errors.ParserError) as e:
                raise ValueError(f"{path}: cannot be read as {suffix[1:].upper()} ({e}); save it as UTF-8 "
                                 "with one header line") from None
            return frame.to_dict("records"), str(path)
        if suffix == ".parquet":
            from datasets import Dataset

            table = Dataset.from_parquet(str(path))
            return table.select(range(min(limit, len(table)))).to_list() if limit else table.to_list(), str(path)
        if suffix == ".json" and path.read_text(encoding="utf-8-sig").lstrip().startswith("["):
            try:  # one JSON array of objects, not JSON lines
                rows = json.loads(path.read_text(encoding="utf-8-sig"))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            bad = next((i for i, r in enumerate(rows, start=1) if not isinstance(r, dict)), None)
            if bad:
                raise ValueError(f"{path}, row {bad}: expected a JSON object")
            return rows[:limit] if limit else rows, str(path)
        if suffix in (".jsonl", ".json"):
            rows = []
            for lineno, line in read_lines(path):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
                    if not isinstance(rows[-1], dict):
                        raise ValueError(f"{path}:{lineno}: expected a JSON object")
                if limit and len(rows) >= limit:
                    break
            return rows, str(path)
        raise ValueError(f"{path}: a {suffix or 'file without a suffix'} file; give one of {TABLE_SUFFIXES}")
    return _read_hub_dataset(str(source), split, config, limit)


def _read_hub_dataset(hub_id: str, split: str, config: str | None, limit: int | None) -> tuple[list[dict], str]:
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", hub_id):
        raise ValueError(f"source={hub_id!r} is no data file (looked at {data_path(hub_id)}) and no hub "
                         f"dataset id (owner/name); files: {', '.join(TABLE_SUFFIXES)}")
    from datasets import load_dataset

    name = f"{hub_id} (split {split!r})"
    try:
        table = load_dataset(hub_id, config, split=f"{split}[:{limit}]" if limit else split)
    except Exception as e:  # offline, unknown id, unknown split or config: all surface here
        raise ValueError(f"{name}: could not load it from the Hugging Face hub ({type(e).__name__}: "
                         f"{str(e)[:300]}). Offline? Save it as a file (table.to_csv / to_parquet) "
                         "where you have a network, and load the file") from None
    return table.to_list(), name


def _map_columns(row: dict, columns: dict[str, str], format: str | None, name: str, i: int) -> dict:
    """One row with the lab's field names (``columns``: field -> column); other columns kept."""
    missing = sorted(set(columns.values()) - set(row))
    if missing:
        raise ValueError(f"{name}, row {i}: no column {missing[0]!r}; the columns are {list(row)}")
    roles = [f for f in columns if f in CHAT_COLUMNS]
    if roles and format != "messages":
        raise ValueError(f"columns={columns}: roles ({roles}) as fields build conversations: pass format='messages'")
    record = {field: row[column] for field, column in columns.items() if field not in CHAT_COLUMNS}
    if roles:  # a blank system cell means no system message in that row
        record["messages"] = [{"role": role, "content": row[columns[role]]} for role in CHAT_COLUMNS
                              if role in columns and (role != "system" or str(row[columns[role]] or "").strip())]
    used = set(columns.values())
    record.update({k: v for k, v in row.items() if k not in used and k not in record})
    return record


def write_jsonl(path, records, format: str | None = None) -> Path:
    """Validate records and write them atomically (``labkit.files``: a crash never leaves half
    a file, and the earlier file stays until the new one is complete)."""
    path, records = Path(path), list(records)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a file name such as {path / 'data.jsonl'}")
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
