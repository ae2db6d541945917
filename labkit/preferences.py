"""Preferences: a person's judgements, kept safely in a JSONL file.

    samples = [{"prompt": "What is a fjord?", "responses": ["A fjord is ...", "Well, so ..."]}]
    w = ranking_widget(samples, "outputs/my_preferences.jsonl")   # order them, click "Save"
    append_preferences("outputs/my_preferences.jsonl", [{"prompt": ..., "chosen": ..., "rejected": ...}])

Each judgement becomes one line ``{"prompt", "chosen", "rejected", "id", ...}`` (the format of
``data/preferences.jsonl`` and of TRL's reward and DPO trainers). The writer is careful:

- **append-only**: earlier lines are copied byte for byte; nothing is ever rewritten or dropped;
- **atomic**: the new file is written next to the old one, flushed to disk, then swapped in with
  ``os.replace``, so a crash leaves either the old file or the new one, never half a file
  (``labkit.files``);
- **one writer at a time**: two notebooks (or two learners on a shared folder) saving to one file
  take turns through a lock; one that cannot get it within a few seconds saves nothing and says so;
- **rerun-safe**: a judgement's ``id`` is a hash of its prompt, chosen and rejected text, and a
  judgement already in the file is skipped, so running a cell twice adds nothing twice;
- **checks first**: a malformed existing file raises ``ValueError`` naming the file and line,
  and is left exactly as it was.
"""
from __future__ import annotations

import hashlib
import html
import json
from itertools import combinations
from pathlib import Path

from . import files
from .data import check_record, read_lines
from .plots import Panel


def judgement_id(prompt: str, chosen: str, rejected: str) -> str:
    """A stable id for one judgement: the same three texts always give the same id."""
    payload = json.dumps([prompt, chosen, rejected], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def _checked(record, where: str) -> dict:
    problem = check_record(record, "preference")   # also refuses chosen == rejected
    if problem:
        raise ValueError(f"{where}: {problem}")
    return record


def _not_a_folder(path: Path) -> None:
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a file name such as {path / 'my_preferences.jsonl'}")


def read_preferences(path) -> list[dict]:
    """Every judgement in ``path`` (an empty list if the file does not exist yet).
    A malformed line raises ``ValueError`` naming the file and the line."""
    path = Path(path)
    if not path.exists():
        return []
    _not_a_folder(path)
    records = []
    for lineno, line in read_lines(path):   # a file that is not UTF-8 is named with its line
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}); "
                             "the file was left untouched") from None
        records.append(_checked(record, f"{path}:{lineno}"))
    return records


def _id(record: dict) -> str:
    return record.get("id") or judgement_id(record["prompt"], record["chosen"], record["rejected"])


def append_preferences(path, judgements) -> int:
    """Append ``judgements`` (dicts with ``prompt``, ``chosen``, ``rejected``; extra fields are
    kept) to ``path``; return how many were new. Everything is checked before anything is
    written; the file is locked while it is read and replaced (a second writer waits, or gets
    ``labkit.files.Busy`` after a few seconds), and it is replaced atomically."""
    path = Path(path)
    _not_a_folder(path)   # before the lock file is made beside it
    if isinstance(judgements, dict):
        raise ValueError("judgements: give a list of judgements (dicts), e.g. [judgement], not one dict")
    checked = []
    for i, j in enumerate(judgements, start=1):
        j = dict(_checked(j, f"judgement {i}"))
        j["id"] = judgement_id(j["prompt"], j["chosen"], j["rejected"])
        checked.append(j)
    with files.locked(path):
        seen = {_id(r) for r in read_preferences(path)}  # raises on a malformed file, before any write
        new = []
        for j in checked:
            if j["id"] not in seen:
                seen.add(j["id"])
                new.append(j)
        if not new:
            return 0
        old_bytes = path.read_bytes() if path.exists() else b""
        if old_bytes and not old_bytes.endswith(b"\n"):
            old_bytes += b"\n"
        lines = "".join(json.dumps(j, ensure_ascii=False) + "\n" for j in new)
        files.write_bytes(path, old_bytes + lines.encode("utf-8"))
    return len(new)


def pairs_from_ranking(prompt: str, ranked: list[str], **extra) -> list[dict]:
    """Every pair implied by an order, best first: ranking n responses gives n(n-1)/2 pairs."""
    return [{"prompt": prompt, "chosen": better, "rejected": worse, **extra}
            for better, worse in combinations(ranked, 2)]


def pair_from_best_worst(prompt: str, best: str, worst: str, **extra) -> dict:
    """The single judgement "best is preferred over worst"."""
    if best == worst:
        raise ValueError("best and worst must be different responses")
    return {"prompt": prompt, "chosen": best, "rejected": worst, **extra}


# --- the ranking widget -----------------------------------------------------------------------

class RankingWidget:
    """Shows the sampled responses to a prompt; the learner orders them (a rank per response) or
    picks the best and the worst; "Save" appends the judgements to a preferences file.

    ``samples`` is a list of ``{"prompt": str, "responses": [str, ...]}`` (what
    ``labkit.rlhf.sample_responses`` returns). Controls: ``prompt_picker``, ``mode``, ``ranks``
    (one dropdown per response, 1 = best), ``best``, ``worst``, ``save``; ``status`` says what
    happened and ``saved`` counts the judgements this widget added."""

    MODES = ("rank all", "best and worst")

    def __init__(self, samples: list[dict], path, annotator: str = "learner"):
        import ipywidgets as W

        if not samples:
            raise ValueError("samples is empty: generate some responses first")
        for i, s in enumerate(samples):
            if not s.get("prompt") or len(s.get("responses", [])) < 2:
                raise ValueError(f"samples[{i}] needs a prompt and at least 2 responses")
        self.samples, self.path, self.annotator = samples, Path(path), annotator
        self.saved = 0
        self.prompt_picker = W.Dropdown(options=[(s["prompt"][:70], i) for i, s in enumerate(samples)],
                                        value=0, description="prompt")
        self.mode = W.ToggleButtons(options=self.MODES, value=self.MODES[0], description="judge by")
        self.prompt_html = W.HTML()
        self.rows = W.VBox()
        self.best = W.Dropdown(description="best")
        self.worst = W.Dropdown(description="worst")
        self.save = W.Button(description="Save judgements", button_style="primary", icon="save")
        self.status = W.HTML()
        self.ranks: list = []
        self.prompt_picker.observe(lambda _: self._show(), names="value")
        self.mode.observe(lambda _: self._show_mode(), names="value")
        self.save.on_click(lambda _: self.submit())
        self.view = Panel([self.prompt_picker, self.prompt_html, self.mode, self.rows,
                           W.HBox([self.best, self.worst]), self.save, self.status])
        self._show()

    @property
    def sample(self) -> dict:
        return self.samples[self.prompt_picker.value]

    def _show(self):
        import ipywidgets as W

        responses = self.sample["responses"]
        n = len(responses)
        self.prompt_html.value = f"<b>Prompt:</b> {html.escape(self.sample['prompt'])}"
        self.ranks = [W.Dropdown(options=list(range(1, n + 1)), value=i + 1, description=f"rank of {chr(65 + i)}",
                                 layout=W.Layout(width="160px")) for i in range(n)]
        cards = [W.HTML(f"<div style='border:1px solid #ccc;padding:4px;margin:2px;white-space:pre-wrap'>"
                        f"<b>{chr(65 + i)}</b> ({len(r.split())} words): {html.escape(r)}</div>",
                        layout=W.Layout(width="100%")) for i, r in enumerate(responses)]
        self.rows.children = [W.HBox([rank, card]) for rank, card in zip(self.ranks, cards)]
        letters = [(chr(65 + i), i) for i in range(n)]
        self.best.options, self.worst.options = letters, letters
        self.best.value, self.worst.value = 0, n - 1
        self._show_mode()

    def _show_mode(self):
        ranking = self.mode.value == self.MODES[0]
        for rank in self.ranks:
            rank.disabled = not ranking
        self.best.disabled = self.worst.disabled = ranking

    def judgements(self) -> list[dict]:
        """The judgements the controls describe now (``ValueError`` if they are inconsistent)."""
        prompt, responses = self.sample["prompt"], self.sample["responses"]
        extra = {"source": self.annotator}
        if self.mode.value == self.MODES[0]:
            ranks = [r.value for r in self.ranks]
            if sorted(ranks) != list(range(1, len(responses) + 1)):
                raise ValueError(f"give each response a different rank (1 = best); got {ranks}")
            ordered = [responses[i] for i in sorted(range(len(responses)), key=lambda i: ranks[i])]
            pairs = pairs_from_ranking(prompt, ordered, **extra)
        else:
            pairs = [pair_from_best_worst(prompt, responses[self.best.value],
                                          responses[self.worst.value], **extra)]
        return [p for p in pairs if p["chosen"] != p["rejected"]]  # identical samples say nothing

    def submit(self) -> int:
        """What the Save button does: append the judgements; returns how many were new. It says
        "Saved" only once it has read them back from the file."""
        try:
            judgements = self.judgements()
            added = append_preferences(self.path, judgements)
            records = read_preferences(self.path)
        except (ValueError, OSError) as e:  # OSError: the lock is busy (files.Busy), the disk is full, ...
            self.status.value = f"<span style='color:#d62728'>Not saved: {html.escape(str(e), quote=False)}</span>"
            return 0
        in_file = {_id(r) for r in records}
        missing = [j for j in judgements if _id(j) not in in_file]
        if missing:
            self.status.value = (f"<span style='color:#d62728'>Not saved: {len(missing)} judgement(s) are not "
                                 f"in {self.path} after writing. Click Save again.</span>")
            return 0
        self.saved += added
        self.status.value = (f"Saved {added} new judgement(s) to {self.path} "
                             f"({len(records)} in the file; repeats are skipped).")
        return added

    def _repr_mimebundle_(self, **kwargs):
        return self.view._repr_mimebundle_(**kwargs)


def ranking_widget(samples: list[dict], path, annotator: str = "learner") -> RankingWidget:
    """A :class:`RankingWidget` for ``samples``, appending to the preferences file ``path``."""
    return RankingWidget(samples, path, annotator)
