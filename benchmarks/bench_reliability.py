"""Reliability (issue #18): what a clumsy learner's bad inputs and faults do to labkit.

Replays the cases a hostile probe tried, each a small function: bad data in every format, bad
lists passed to ``labkit.train``, bad hyperparameters, runs that go wrong, preferences, adapters
and serving, a damaged model cache, offline use, and writes that are killed or interrupted.
Each case declares what a good outcome is, and is classified:

- ``clear error``: refused with the expected exception (or a run stopped with a stated reason),
  and the message names the culprit (file:line, field, parameter, folder);
- ``handled``: a fault that needs no error (a kill -9, Ctrl-C, two writers) left everything whole;
- ``unclear error``: the wrong exception type, or a message that does not name the culprit;
- ``passed silently``: no error and no stated reason where one was due;
- ``lost data``: something the learner had changed or disappeared (files compared byte for byte
  before and after, model weights where they are promised to stay), whatever was said;
- ``left litter``: temporary or partial files were left behind;
- ``not run``: the case's own setup failed (a defect of this script, or an API that changed).

Only the toy model (``labkit.toy``) is used; every case runs in its own temporary folder (also
its working directory), so nothing is written to ``data/``, ``outputs/`` or the model cache.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_reliability.py            # print the table
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_reliability.py --write    # and RESULTS.md
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_reliability.py --only cache   # a few cases
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import multiprocessing
import os
import random
import re
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table, write_section  # noqa: E402

COMMAND = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_reliability.py --write"
OUTCOMES = ("clear error", "handled", "unclear error", "passed silently", "lost data", "left litter", "not run")
GOOD = ("clear error", "handled")
STOP = "a stated reason"      # expect: the case returns what the run said (history.stopped, a notice)
SURVIVE = "nothing lost"      # expect: the case completes (or raises one of `tolerate`), all kept
TEMP_PREFIX = ".labkit-tmp-"  # labkit.files' temporary names: litter if left behind


# --- cases and the classifier -----------------------------------------------------------------

@dataclass
class Case:
    """One replayed input or fault. ``fn(ctx)`` is a generator: the code before its ``yield`` sets
    up what the learner has (everything then in ``ctx.dir`` must survive, byte for byte, unless
    it is under ``may_change``); it may yield a ``check()`` returning a list of problems (weights
    changed, a line lost). The code after the ``yield`` does what the learner did; it raises, or
    returns what the run said (for ``expect=STOP``).

    ``expect``: exception class names (a subclass counts), ``STOP`` or ``SURVIVE``. ``culprit``:
    strings that must all be in the message. ``tolerate``: with ``SURVIVE``, exception names
    that are fine (a Ctrl-C passed on). ``new_ok``: name patterns that may appear (a lock file)."""
    category: str
    name: str
    fn: object
    expect: tuple | str = ("ValueError",)
    culprit: tuple = ()
    tolerate: tuple = ()
    may_change: tuple = ()
    new_ok: tuple = ()


CASES: list[Case] = []


def case(category: str, name: str, expect=("ValueError",), culprit=(), tolerate=(), may_change=(), new_ok=()):
    """Register the decorated generator as a case (see :class:`Case`)."""
    def register(fn):
        CASES.append(Case(category, name, fn, (expect,) if isinstance(expect, type) else expect,
                          tuple(culprit), tuple(tolerate), tuple(may_change), tuple(new_ok)))
        return fn
    return register


@dataclass
class Ctx:
    dir: Path            # the case's own folder, and the working directory while it runs
    out: io.StringIO     # what was printed (stdout and stderr) so far

    def path(self, name: str) -> Path:
        return self.dir / name


def is_a(error: BaseException, names) -> bool:
    return any(c.__name__ in names for c in type(error).__mro__)


def describe(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def classify(case: Case, error: BaseException | None, report: str | None, lost: list[str],
             litter: list[str]) -> tuple[str, str]:
    """``(outcome, message)`` for what a case did: see the module's docstring."""
    if lost:
        return "lost data", "; ".join(lost)
    if litter:
        return "left litter", "left behind: " + ", ".join(litter)
    if case.expect == SURVIVE:
        if error is None:
            return "handled", report or "completed; nothing lost"
        if is_a(error, case.tolerate):
            return "handled", f"{describe(error)} passed on; nothing lost" + (f" ({report})" if report else "")
        return "unclear error", describe(error)
    if case.expect == STOP:
        if error is not None:
            return "unclear error", describe(error)
        if not report or report == "finished":
            return "passed silently", f"no stated reason (stopped={report!r})"
        return ("clear error" if all(c in report for c in case.culprit) else "unclear error"), report
    if error is None:
        return "passed silently", "no error" + (f" ({report})" if report else "")
    message = describe(error)
    if is_a(error, case.expect) and all(c in str(error) for c in case.culprit):
        return "clear error", message
    return "unclear error", message


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under ``folder``, by relative path."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_symlink():
            out[rel] = os.readlink(p).encode()
        elif p.is_dir():
            out[rel] = None
        else:
            out[rel] = p.read_bytes()
    return out


def under(rel: str, prefixes) -> bool:
    return any(rel == p or rel.startswith(p.rstrip("/") + "/") for p in prefixes)


def compare(before: dict, after: dict, case: Case) -> tuple[list[str], list[str]]:
    """``(lost, litter)``: what of ``before`` changed or went, and what new is left behind."""
    lost = []
    for rel, data in before.items():
        if under(rel, case.may_change):
            continue
        if rel not in after:
            lost.append(f"{rel} was deleted")
        elif after[rel] != data:
            lost.append(f"{rel} was changed")
    new = [rel for rel in after if rel not in before]
    litter = [rel for rel in new
              if TEMP_PREFIX in rel or ".tmp" in rel.rsplit("/", 1)[-1]
              or not (under(rel, case.may_change) or any(fnmatch(rel.rsplit("/", 1)[-1], p) for p in case.new_ok))]
    litter = [rel for rel in litter if not any(rel.startswith(o + "/") for o in litter if o != rel)]
    more = lambda items: items[:4] + ([f"... ({len(items)} in all)"] if len(items) > 4 else [])  # noqa: E731
    return more(lost), more(litter)


def run_case(case: Case, root: Path, index: int = 0) -> dict:
    """Run one case in ``root/<index>`` and return its row: category, case, outcome, message."""
    folder = Path(root) / f"case{index:02d}"
    folder.mkdir(parents=True)
    out, cwd, start = io.StringIO(), os.getcwd(), time.perf_counter()
    error = report = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        os.chdir(folder)
        try:
            steps = case.fn(Ctx(folder, out))
            try:
                check = next(steps)
            except (Exception, KeyboardInterrupt, StopIteration) as e:
                return row(case, "not run", f"setup failed: {describe(e)}", folder, start)
            before = tree(folder)
            try:
                next(steps)
                steps.close()
                error = RuntimeError(f"case {case.name!r} yields twice")
            except StopIteration as stop:
                report = stop.value
            except (Exception, KeyboardInterrupt) as e:
                error = e
            lost, litter = compare(before, tree(folder), case)
            if check is not None:
                try:
                    lost += check()
                except Exception as e:
                    lost.append(f"the check after the case failed ({describe(e)})")
        finally:
            os.chdir(cwd)
    outcome, message = classify(case, error, report, lost, litter)
    return row(case, outcome, message, folder, start)


def row(case: Case, outcome: str, message: str, folder: Path, start: float) -> dict:
    message = str(message).replace(f"{folder}/", "").replace(str(folder), ".").strip()
    message = re.sub(rf"{re.escape(TEMP_PREFIX)}(\w+)\.[^.\s]+\.\d+\.[0-9a-f]+\.", rf"{TEMP_PREFIX}\1.<host>.<pid>.", message)
    first = message.splitlines()[0] if message else ""
    first = first if len(first) <= 200 else first[:197] + "..."
    return {"category": case.category, "case": case.name, "outcome": outcome, "message": first,
            "seconds": time.perf_counter() - start}


def totals(rows: list[dict]) -> list[dict]:
    """Per category (in order of first appearance) and overall: cases and each outcome's count."""
    cats = list(dict.fromkeys(r["category"] for r in rows))
    out = []
    for cat in [*cats, "all"]:
        mine = [r for r in rows if cat in ("all", r["category"])]
        out.append({"category": f"**{cat}**" if cat == "all" else cat, "cases": len(mine),
                    **{o: sum(r["outcome"] == o for r in mine) for o in OUTCOMES}})
    return out


# --- helpers the cases share ------------------------------------------------------------------

@functools.cache
def _tokenizer():
    from labkit.toy import toy_tokenizer

    return toy_tokenizer()


def toy(**kwargs):
    """A fresh toy model (two layers, 32 wide) and the shared toy tokenizer."""
    from labkit.toy import toy_model

    return toy_model(tokenizer=_tokenizer(), **kwargs)


def toy_data() -> list[dict]:
    from labkit.toy import TOY_TEXT

    return [{"text": t} for t in TOY_TEXT]


def write_lines(path: Path, lines, encoding: str = "utf-8") -> Path:
    path.write_bytes("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines).encode(encoding))
    return path


def kept(model, what: str = "the model"):
    """A check: ``model``'s parameters (names and values) and layers are as they are now."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    layers = [type(m).__name__ for m in model.modules()]

    def check():
        now = dict(model.named_parameters())
        if set(now) != set(before):
            added = sorted(set(now) - set(before))
            return [f"{what}'s parameters changed ({len(added)} added, e.g. {added[:1]})"]
        moved = [n for n in before if not torch_equal(before[n], now[n])]
        problems = [f"{what}'s weights changed ({', '.join(moved[:2])})"] if moved else []
        if [type(m).__name__ for m in model.modules()] != layers:
            problems.append(f"{what}'s layers changed")
        return problems
    return check


def kept_base(model):
    """A check for a LoRA run: the base weights (not the adapters) are as they are now."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def check():
        now = {n.replace("base_model.model.", "").replace(".base_layer", ""): p
               for n, p in model.named_parameters() if "lora_" not in n}
        moved = [n for n in before if n not in now or not torch_equal(before[n], now[n])]
        return [f"base weights changed ({', '.join(moved[:2])})"] if moved else []
    return check


def finite(model):
    def check():
        import torch

        bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
        return [f"weights left NaN or infinite ({', '.join(bad[:2])})"] if bad else []
    return check


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


def sigint() -> None:
    """What Ctrl-C (or "interrupt kernel") does: SIGINT to this process."""
    os.kill(os.getpid(), signal.SIGINT)


def interrupted_save(real):
    """A ``save_pretrained`` that writes, cuts its safetensors files in half (the disk had only got
    that far) and then gets Ctrl-C."""
    def save(self, save_directory, *args, **kwargs):
        real(self, save_directory, *args, **kwargs)
        for f in Path(save_directory).rglob("*.safetensors"):
            with open(f, "r+b") as fh:
                fh.truncate(f.stat().st_size // 2)
        sigint()
    return save


def truncate(path: Path, keep: float = 0.5) -> None:
    with open(path, "r+b") as f:
        f.truncate(int(path.stat().st_size * keep))


@functools.cache
def _peft_model():
    """A toy model with two LoRA adapters, "medical" and "legal" (random, non-zero)."""
    import torch
    from peft import LoraConfig, get_peft_model

    model, _ = toy()
    torch.manual_seed(1)
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False), "medical")
    torch.manual_seed(2)
    model.add_adapter("legal", LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    return model


def saved_adapter(folder: Path, name: str = "medical") -> Path:
    from labkit import serving

    return serving.save_adapter(_peft_model(), folder, name)


@contextlib.contextmanager
def no_network():
    """Offline, as on a laptop without Wi-Fi: the hub cannot be reached, nothing is cached there,
    HF_HUB_OFFLINE is not set; a download that is tried anyway fails at once (instead of after
    the network's time-outs) and says so."""
    import transformers

    from labkit import models

    def download(*args, **kwargs):
        raise RuntimeError(f"a download was tried offline: from_pretrained{args} (a learner would wait "
                           "for the network's time-outs)")

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(models, "hub_reachable", lambda timeout_s=3.0: False))
        stack.enter_context(mock.patch.object(models, "_cached_on_hub_cache", lambda hub_id: False))
        env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
        stack.enter_context(mock.patch.dict(os.environ, env, clear=True))
        for auto in ("AutoConfig", "AutoTokenizer", "AutoModelForCausalLM", "AutoModelForSequenceClassification"):
            stack.enter_context(mock.patch.object(getattr(transformers, auto), "from_pretrained", download))
        yield


@contextlib.contextmanager
def toy_cache(folder: Path, packaged: bool = True):
    """A model cache in ``folder/cache`` whose "packaged GGUF" converts to the toy model in
    milliseconds (as tests/test_reliability.py's ``toy_cache``). Yields ``(spec, cache folder, model)``."""
    import transformers

    from labkit import models

    gguf = folder / "wheel" / "SmolLM2.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    model, tok = toy()
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.dict(os.environ, {"LABKIT_CACHE": str(folder / "cache"),
                                                         "LABKIT_DEVICE": "cpu"}))
        stack.enter_context(mock.patch.object(models, "packaged_gguf_path",
                                              lambda spec: gguf if packaged else None))
        for cls, obj in ((transformers.AutoModelForCausalLM, model), (transformers.AutoTokenizer, tok)):
            real = cls.from_pretrained

            def from_pretrained(*args, _real=real, _obj=obj, **kwargs):
                return _obj if "gguf_file" in kwargs else _real(*args, **kwargs)

            stack.enter_context(mock.patch.object(cls, "from_pretrained", from_pretrained))
        spec = models.REGISTRY[models.OFFLINE_MODEL]
        yield spec, models.converted_path(spec), model


def judgement(writer, i) -> dict:
    return {"prompt": f"question {writer}-{i}", "chosen": "a clear answer", "rejected": "a rambling answer"}


def prefs_file(ctx: Ctx, name: str = "prefs.jsonl") -> Path:
    from labkit.preferences import append_preferences

    path = ctx.path(name)
    append_preferences(path, [judgement(0, 0), judgement(0, 1)])
    return path


# --- data files (labkit.data) -----------------------------------------------------------------

D = "data files"


@case(D, "invalid JSON on line 3", culprit=("bad.jsonl:3", "JSON"))
def _(ctx):
    p = write_lines(ctx.path("bad.jsonl"), ['{"text": "ok"}', '{"text": "fine"}', '{"text": oops}'])
    yield
    from labkit.data import read_jsonl
    read_jsonl(p)


@case(D, "missing field ('completion')", culprit=("d.jsonl:2", "'completion'"))
def _(ctx):
    p = write_lines(ctx.path("d.jsonl"), [{"prompt": "a", "completion": "b"}, {"prompt": "p"}])
    yield
    from labkit.data import read_jsonl
    read_jsonl(p)


@case(D, "wrong type (completion: 3)", culprit=("d.jsonl:2", "'completion'"))
def _(ctx):
    p = write_lines(ctx.path("d.jsonl"), [{"prompt": "a", "completion": "b"}, {"prompt": "p", "completion": 3}])
    yield
    from labkit.data import read_jsonl
    read_jsonl(p, "prompt_completion")


@case(D, "empty field (completion: \"\")", culprit=("d.jsonl:2", "'completion'"))
def _(ctx):
    p = write_lines(ctx.path("d.jsonl"), [{"prompt": "a", "completion": "b"}, {"prompt": "p", "completion": " "}])
    yield
    from labkit.data import read_jsonl
    read_jsonl(p)


@case(D, "a Latin-1 file", culprit=("latin1.jsonl:2", "UTF-8"))
def _(ctx):
    p = write_lines(ctx.path("latin1.jsonl"), ['{"text": "ok"}', '{"text": "café"}'], encoding="latin-1")
    yield
    from labkit.data import read_jsonl
    read_jsonl(p)


@case(D, "a UTF-16 file", culprit=("u16.jsonl", "UTF-16"))
def _(ctx):
    p = ctx.path("u16.jsonl")
    p.write_text('{"text": "ok"}\n{"text": "fine"}\n', encoding="utf-16")
    yield
    from labkit.data import read_jsonl
    read_jsonl(p)


@case(D, "a lone surrogate (\\ud800) in 'chosen'", culprit=("pairs.jsonl:1", "'chosen'"))
def _(ctx):
    p = write_lines(ctx.path("pairs.jsonl"), ['{"prompt": "p", "chosen": "a\\ud800b", "rejected": "c"}'])
    yield
    from labkit.data import read_jsonl
    read_jsonl(p)


@case(D, "chosen == rejected", culprit=("pairs.jsonl:2", "'chosen'"))
def _(ctx):
    p = write_lines(ctx.path("pairs.jsonl"), [{"prompt": "p", "chosen": "a", "rejected": "b"},
                                              {"prompt": "q", "chosen": "same", "rejected": "same "}])
    yield
    from labkit.data import read_jsonl
    read_jsonl(p)


@case(D, "assistant-only chat", culprit=("chat.jsonl:1", "user"))
def _(ctx):
    p = write_lines(ctx.path("chat.jsonl"), [{"messages": [{"role": "assistant", "content": "hi"}]}])
    yield
    from labkit.data import read_jsonl
    read_jsonl(p)


@case(D, "unknown format name (format='chat')", culprit=("format", "'chat'"))
def _(ctx):
    p = write_lines(ctx.path("d.jsonl"), [{"text": "ok"}])
    yield
    from labkit.data import read_jsonl
    read_jsonl(p, format="chat")


@case(D, "a record in no known format", culprit=("d.jsonl:1", "question"))
def _(ctx):
    p = write_lines(ctx.path("d.jsonl"), [{"question": "q", "reply": "r"}])
    yield
    from labkit.data import read_jsonl
    read_jsonl(p)


@case(D, "an empty file", culprit=("empty.jsonl", "empty"))
def _(ctx):
    p = ctx.path("empty.jsonl")
    p.write_bytes(b"")
    yield
    from labkit.data import read_jsonl
    read_jsonl(p)


@case(D, "a 9 MB line", culprit=("huge.jsonl:2",))
def _(ctx):
    p = write_lines(ctx.path("huge.jsonl"), ['{"text": "ok"}', json.dumps({"text": "x" * 9 * 2**20})])
    yield
    from labkit.data import read_jsonl
    read_jsonl(p)


@case(D, "a folder given as the data file", expect=("ValueError", "OSError"), culprit=("my_data", "folder"))
def _(ctx):
    (ctx.path("my_data")).mkdir()
    write_lines(ctx.path("my_data") / "train.jsonl", [{"text": "ok"}])
    yield
    from labkit.data import read_jsonl
    read_jsonl(ctx.path("my_data"))


@case(D, "write_jsonl with a bad record over a file", culprit=("record 2", "'text'"))
def _(ctx):
    p = write_lines(ctx.path("train.jsonl"), [{"text": "the learner's data"}])
    yield
    from labkit.data import write_jsonl
    write_jsonl(p, [{"text": "new"}, {"text": ""}])



@case(D, "write_jsonl to a folder", expect=("ValueError", "OSError"), culprit=("my_data", "folder"))
def _(ctx):
    (ctx.path("my_data")).mkdir()
    write_lines(ctx.path("my_data") / "train.jsonl", [{"text": "the learner's data"}])
    yield
    from labkit.data import write_jsonl
    write_jsonl(ctx.path("my_data"), [{"text": "new"}])

# --- lists passed to labkit.train -------------------------------------------------------------

L = "lists to train"


def train_list(records, name="train_data"):
    """A case body: train a fresh toy model (LoRA, 1 step) on ``records``; the model must stay as
    it was (no adapters added)."""
    def fn(ctx):
        model, tok = toy()
        yield kept(model)
        from labkit.training import train
        kwargs = {"eval_data": records, "train_data": toy_data()} if name == "eval_data" else {"train_data": records}
        train(model, tok, method="lora", steps=1, live=False, **kwargs)
    return fn


case(L, "an empty text", culprit=("train_data[1]", "'text'"))(train_list([{"text": "ok"}, {"text": ""}]))
case(L, "a None record", culprit=("train_data[1]", "NoneType"))(train_list([{"text": "ok"}, None]))
case(L, "preference records", culprit=("train_data[0]", "'preference'"))(
    train_list([{"prompt": "p", "chosen": "a", "rejected": "b"}]))
case(L, "an empty list", culprit=("train_data", "empty"))(train_list([]))
case(L, "a file name instead of records", culprit=("train_data", "str"))(train_list("data/domains/medical.jsonl"))
case(L, "a bad eval_data record", culprit=("eval_data[0]", "'text'"))(train_list([{"text": " "}], "eval_data"))


# --- hyperparameters (TrainConfig) ------------------------------------------------------------

H = "hyperparameters"


def bad_setting(**setting):
    """A case body: ``train(..., **setting)`` must refuse before any work, the model unchanged."""
    def fn(ctx):
        model, tok = toy()
        yield kept(model)
        from labkit.training import train
        train(model, tok, toy_data(), live=False, **{"steps": 2, **setting})
    return fn


for field, value in [("learning_rate", 0), ("learning_rate", -1), ("learning_rate", float("nan")),
                     ("weight_decay", float("nan")), ("weight_decay", float("inf")), ("lora_r", True),
                     ("lora_r", 0), ("lora_alpha", "16"), ("method", "magic"), ("steps", 0),
                     ("max_length", 4)]:
    case(H, f"{field}={value!r}", culprit=(field,))(bad_setting(**{field: value}))


case(H, "target_modules typo ['q_proj', 'q_prj']", culprit=("target_modules", "q_prj"))(
    bad_setting(target_modules=["q_proj", "q_prj"]))
case(H, "a misspelt field (lerning_rate=1e-4)", culprit=("lerning_rate",))(bad_setting(lerning_rate=1e-4))


@case(H, "a saved config with a misspelt field", culprit=("lerning_rate",))
def _(ctx):
    p = ctx.path("config.json")
    p.write_text(json.dumps({"method": "lora", "lerning_rate": 2e-4}))
    yield
    from labkit.training import TrainConfig
    TrainConfig.load(p)



@case(H, "a saved config that is not JSON (empty file)", culprit=("config.json",))
def _(ctx):
    p = ctx.path("config.json")
    p.write_text("")
    yield
    from labkit.training import TrainConfig
    TrainConfig.load(p)

# --- runs that go wrong (the toy model) -------------------------------------------------------

T = "training runs"


@case(T, "learning_rate=1e3, full fine-tuning", expect=STOP, culprit=("diverged", "restored"))
def _(ctx):
    model, tok = toy()
    yield kept(model)
    from labkit.training import train
    return train(model, tok, toy_data(), method="full", steps=8, learning_rate=1e3, live=False).history.stopped


@case(T, "learning_rate=1e3, LoRA", expect=STOP, culprit=("diverged", "restored"))
def _(ctx):
    model, tok = toy()
    yield kept_base(model)
    from labkit.training import train
    return train(model, tok, toy_data(), method="lora", steps=8, learning_rate=1e3, live=False).history.stopped


@case(T, "Ctrl-C (SIGINT) at step 2", expect=STOP, culprit=("interrupted at step 2",))
def _(ctx):
    from transformers import TrainerCallback

    class CtrlC(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 2:
                sigint()

    model, tok = toy()
    yield finite(model)
    from labkit.training import train
    return train(model, tok, toy_data(), method="full", steps=6, live=False, callbacks=[CtrlC()]).history.stopped


@case(T, "the loss turns NaN at step 3", expect=STOP, culprit=("step 3", "nan"))
def _(ctx):
    calls = {"n": 0}

    def poison(module, inputs, output):
        if module.training:
            calls["n"] += 1
            if calls["n"] >= 3:
                return output * float("nan")
        return output

    model, tok = toy()
    model.model.norm.register_forward_hook(poison)
    yield finite(model)
    from labkit.training import train
    return train(model, tok, toy_data(), method="full", steps=6, learning_rate=1e-3, live=False).history.stopped


@case(T, "LoRA on a model that already has adapters", culprit=("already has adapters",))
def _(ctx):
    import torch
    from peft import LoraConfig, get_peft_model

    model, tok = toy()
    torch.manual_seed(1)
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    yield kept(model)
    from labkit.training import train
    train(model, tok, toy_data(), method="lora", steps=2, live=False)


@case(T, "packing=True with chat data", culprit=("packing",))
def _(ctx):
    model, tok = toy()
    chat = [{"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}]}] * 2
    yield kept(model)
    from labkit.training import train
    train(model, tok, chat, method="lora", steps=2, packing=True, live=False)


# --- preferences ------------------------------------------------------------------------------

P = "preferences"


@case(P, "a judgement with chosen == rejected", culprit=("judgement 2", "'chosen'"))
def _(ctx):
    path = prefs_file(ctx)
    yield
    from labkit.preferences import append_preferences
    append_preferences(path, [judgement(1, 0), {"prompt": "p", "chosen": "same", "rejected": "same"}])


@case(P, "a judgement without 'rejected'", culprit=("judgement 1", "'rejected'"))
def _(ctx):
    path = prefs_file(ctx)
    yield
    from labkit.preferences import append_preferences
    append_preferences(path, [{"prompt": "p", "chosen": "a"}])



@case(P, "one judgement passed as a dict, not a list", culprit=("list",))
def _(ctx):
    path = prefs_file(ctx)
    yield
    from labkit.preferences import append_preferences
    append_preferences(path, judgement(1, 0))

@case(P, "a folder as the preferences path", culprit=("my_prefs", "folder"))
def _(ctx):
    folder = ctx.path("my_prefs")
    folder.mkdir()
    (folder / "notes.txt").write_text("which answers I liked")
    yield
    from labkit.preferences import append_preferences
    append_preferences(folder, [judgement(1, 0)])


@case(P, "appending to a file with a malformed line", culprit=("prefs.jsonl:2",),
      new_ok=(".*.lock",))
def _(ctx):
    path = ctx.path("prefs.jsonl")
    write_lines(path, [{**judgement(0, 0)}, '{"prompt": "p", "chosen": "a", "rejected": ', {**judgement(0, 2)}])
    yield
    from labkit.preferences import append_preferences
    append_preferences(path, [judgement(1, 0)])


@case(P, "appending to a Latin-1 file", culprit=("prefs.jsonl:2", "UTF-8"),
      new_ok=(".*.lock",))
def _(ctx):
    path = write_lines(ctx.path("prefs.jsonl"), [judgement(0, 0), {"prompt": "café?", "chosen": "a", "rejected": "b"}],
                       encoding="latin-1")
    path.write_bytes(path.read_bytes().replace(b"\\u00e9", "é".encode("latin-1")))
    yield
    from labkit.preferences import append_preferences
    append_preferences(path, [judgement(1, 0)])


@case(P, "two writers at once (2 x 30 appends)", expect=SURVIVE, may_change=("prefs.jsonl",), new_ok=(".*.lock",))
def _(ctx):
    from labkit.preferences import append_preferences, read_preferences

    path = prefs_file(ctx)
    original = path.read_bytes()
    fork = multiprocessing.get_context("fork")
    go = fork.Event()

    def learner(writer):
        go.wait()
        for i in range(30):
            append_preferences(path, [judgement(writer, i)])

    def check():
        problems = [] if path.read_bytes().startswith(original) else ["the lines already in the file were changed"]
        got = {r["prompt"] for r in read_preferences(path)}
        want = {judgement(0, i)["prompt"] for i in (0, 1)} | {judgement(w, i)["prompt"] for w in (1, 2) for i in range(30)}
        if want - got:
            problems.append(f"{len(want - got)} of {len(want)} judgements are not in the file")
        return problems

    yield check
    writers = [fork.Process(target=learner, args=(w,)) for w in (1, 2)]
    for w in writers:
        w.start()
    go.set()
    for w in writers:
        w.join(120)
    if [w.exitcode for w in writers] != [0, 0]:
        raise RuntimeError(f"a writer failed: exit codes {[w.exitcode for w in writers]}")
    return f"{len(read_preferences(path))} of 62 judgements in the file"


@case(P, "Ctrl-C while the file is being written", expect=SURVIVE, tolerate=("KeyboardInterrupt",),
      new_ok=(".*.lock",))
def _(ctx):
    path = prefs_file(ctx)
    yield
    from labkit.preferences import append_preferences
    real = os.fsync

    def fsync(fd):
        real(fd)
        sigint()

    with mock.patch.object(os, "fsync", fsync):
        append_preferences(path, [judgement(1, 0)])


# --- adapters and serving ---------------------------------------------------------------------

A = "adapters"


@case(A, "save_adapter into a folder of other adapters and notes", expect=("AdapterError",),
      culprit=("adapters:", "nothing was written"))
def _(ctx):
    root = ctx.path("adapters")
    saved_adapter(root / "medical", "medical")
    (root / "notes.txt").write_text("medical: lr 2e-4, 30 steps")
    yield
    from labkit import serving
    serving.save_adapter(_peft_model(), root, "legal")


@case(A, "save_adapter over an adapter folder holding notes", expect=("AdapterError",), culprit=("my_notes.md",))
def _(ctx):
    folder = saved_adapter(ctx.path("medical"), "medical")
    (folder / "my_notes.md").write_text("keep me")
    yield
    from labkit import serving
    serving.save_adapter(_peft_model(), folder, "medical")



@case(A, "save_adapter of a model with no adapter (a full fine-tune)", culprit=("adapter",))
def _(ctx):
    model, _ = toy()
    yield
    from labkit import serving
    serving.save_adapter(model, ctx.path("medical"))

@case(A, "Ctrl-C while saving over an adapter", expect=SURVIVE, tolerate=("KeyboardInterrupt",))
def _(ctx):
    from peft import PeftModel

    folder = saved_adapter(ctx.path("medical"), "medical")
    yield
    from labkit import serving
    with mock.patch.object(PeftModel, "save_pretrained", interrupted_save(PeftModel.save_pretrained)):
        serving.save_adapter(_peft_model(), folder, "legal")


def load_broken(damage, name="medical"):
    """A case body: save an adapter, ``damage(folder)`` it, load it onto a fresh toy base; the
    base model must stay as it was."""
    def fn(ctx):
        folder = saved_adapter(ctx.path("medical"), "medical")
        damage(folder)
        base, _ = toy()
        yield kept(base, "the base model")
        from labkit import serving
        serving.load_adapters(base, {name: folder})
    return fn


case(A, "load: adapter_config.json is not JSON", expect=("AdapterError",), culprit=("adapter_config.json",))(
    load_broken(lambda f: (f / "adapter_config.json").write_text('{"r": 4, "lora_alpha": ')))
case(A, "load: adapter_config.json missing", expect=("AdapterError",), culprit=("adapter_config.json",))(
    load_broken(lambda f: (f / "adapter_config.json").unlink()))
case(A, "load: r in the config is a string", expect=("AdapterError",), culprit=("adapter_config.json", "r="))(
    load_broken(lambda f: (f / "adapter_config.json").write_text(
        json.dumps({**json.loads((f / "adapter_config.json").read_text()), "r": "4"}))))
case(A, "load: weights cut short", expect=("AdapterError",), culprit=("adapter_model.safetensors",))(
    load_broken(lambda f: truncate(f / "adapter_model.safetensors")))


@case(A, "load: an adapter made for another model size", expect=("AdapterError",),
      culprit=("adapter_model.safetensors", "shape"))
def _(ctx):
    from peft import LoraConfig, get_peft_model

    from labkit import serving

    wide, _ = toy(hidden_size=64)
    wide = get_peft_model(wide, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False), "wide")
    folder = serving.save_adapter(wide, ctx.path("wide"), "wide")
    base, _ = toy()
    yield kept(base, "the base model")
    serving.load_adapters(base, {"wide": folder})


@case(A, "a mixed batch naming an adapter not loaded", culprit=("'lega'",))
def _(ctx):
    from labkit import serving

    folder = saved_adapter(ctx.path("medical"), "medical")
    base, tok = toy()
    served = serving.load_adapters(base, {"medical": folder})
    yield
    serving.mixed_batch_logits(served, tok, ["Hello", "Hi"], ["medical", "lega"])


# --- the model cache --------------------------------------------------------------------------

C = "model cache"


@case(C, "model.safetensors cut short: doctor, then load", expect=STOP,
      culprit=("doctor: damaged", "model.safetensors", "rebuilding"), may_change=("cache",))
def _(ctx):
    from labkit import doctor, models

    with toy_cache(ctx.dir) as (spec, folder, _):
        models.convert_gguf(spec)
        truncate(folder / "model.safetensors")

        def check():
            problem = models.cache_problem(folder)
            return [f"the cache is still damaged after the load ({problem})"] if problem else []

        yield check
        said = doctor.model_cache_check()
        start = ctx.out.tell()
        model, _ = models.load_model()
        notice = ctx.out.getvalue()[start:].strip()
        if said.ok and not notice:
            return None
        return f"doctor: {said.detail} | load: {notice or '(nothing said)'}"


@case(C, "config.json broken in the cache: load", expect=STOP, culprit=("config.json", "rebuilding"),
      may_change=("cache",))
def _(ctx):
    from labkit import models

    with toy_cache(ctx.dir) as (spec, folder, _):
        models.convert_gguf(spec)
        (folder / "config.json").write_text('{"architectures": ')
        yield
        start = ctx.out.tell()
        models.load_model()
        return ctx.out.getvalue()[start:].strip() or None


@case(C, "cache damaged and the packaged model not installed", expect=("ModelUnavailable",),
      culprit=("model.safetensors", "pip install"))
def _(ctx):
    from labkit import models

    with toy_cache(ctx.dir) as (spec, folder, _):
        models.convert_gguf(spec)
        truncate(folder / "model.safetensors")
        models.packaged_gguf_path = lambda spec: None   # undone with the toy cache's patches
        yield
        models.load_model()


@case(C, "Ctrl-C while the cache is being rebuilt", expect=SURVIVE, tolerate=("KeyboardInterrupt",))
def _(ctx):
    from labkit import models

    with toy_cache(ctx.dir) as (spec, folder, model):
        models.convert_gguf(spec)
        cls = type(model)
        yield
        with mock.patch.object(cls, "save_pretrained", interrupted_save(cls.save_pretrained)):
            models.convert_gguf(spec, force=True)


# --- offline ----------------------------------------------------------------------------------

O = "offline"


@case(O, "load_model of a hub model, offline", expect=("ModelUnavailable",),
      culprit=("smollm2-360m", "smollm2-135m-instruct"))
def _(ctx):
    yield
    from labkit import models
    with no_network():
        models.load_model("smollm2-360m")


@case(O, "load_reward_model of a hub model, offline", expect=("ModelUnavailable",),
      culprit=("smollm2-360m", "smollm2-135m-instruct"))
def _(ctx):
    yield
    from labkit import rlhf
    with no_network():
        rlhf.load_reward_model("smollm2-360m")


@case(O, "load_model('./my-modle'), a folder that is not there", culprit=("./my-modle",))
def _(ctx):
    yield
    from labkit import models
    with no_network():
        models.load_model("./my-modle")


@case(O, "export_job with a misspelt model, offline", culprit=("smollm2-135m-instruc",))
def _(ctx):
    data = write_lines(ctx.path("train.jsonl"), [{"text": f"line {i}"} for i in range(4)])
    yield
    from labkit.export import export_job
    from labkit.training import TrainConfig
    with no_network():
        export_job(TrainConfig(), model="smollm2-135m-instruc", data=str(data), out_dir=ctx.path("job"))


# --- files (labkit.files) ---------------------------------------------------------------------

F = "files"


@case(F, "write_jsonl killed (kill -9) at random, 4 times", expect=SURVIVE)
def _(ctx):
    from labkit.data import write_jsonl

    path = ctx.path("train.jsonl")
    records = [{"text": f"the learner's line {k}"} for k in range(2000)]
    write_jsonl(path, records)
    original, problems = path.read_bytes(), []
    yield lambda: problems
    fork, rng, finished = multiprocessing.get_context("fork"), random.Random(0), 0
    for turn in range(4):
        started, done = fork.Event(), fork.Value("i", 0)

        def loop():
            started.set()
            for i in range(10**6):
                write_jsonl(path, records)   # the same text each time: any other bytes are damage
                done.value = i + 1

        child = fork.Process(target=loop)
        child.start()
        if not started.wait(30):
            raise RuntimeError("the writer did not start")
        time.sleep(rng.uniform(0, 0.15))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        finished += done.value
        if path.read_bytes() != original:
            problems.append(f"after kill {turn + 1}, train.jsonl is not whole ({path.stat().st_size:,} bytes)")
        write_jsonl(path, records)   # the next write cleans what the killed one left
    return f"{finished} writes finished between 4 kills; the file whole after each"


@case(F, "the lock held by another writer", expect=("Busy",), culprit=("prefs.jsonl", "nothing was written"),
      new_ok=(".*.lock",))
def _(ctx):
    path = prefs_file(ctx)
    yield
    from labkit import files
    from labkit.preferences import append_preferences
    with mock.patch.object(files, "LOCK_TIMEOUT_S", 0.2), files.locked(path):
        append_preferences(path, [judgement(1, 0)])


@case(F, "disk full while saving over an adapter", expect=SURVIVE, tolerate=("OSError",))
def _(ctx):
    import errno

    from peft import PeftModel

    folder = saved_adapter(ctx.path("medical"), "medical")
    real = PeftModel.save_pretrained

    def disk_full(self, save_directory, *args, **kwargs):
        real(self, save_directory, *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    yield
    from labkit import serving
    with mock.patch.object(PeftModel, "save_pretrained", disk_full):
        serving.save_adapter(_peft_model(), folder, "legal")


# --- the report -------------------------------------------------------------------------------

def md(text) -> str:
    return str(text).replace("|", "\\|").replace("<", "&lt;")


def section(rows: list[dict], wall_s: float) -> str:
    """The body of the "Reliability" section of RESULTS.md."""
    bad = [r for r in rows if r["outcome"] not in GOOD]
    cells = lambda rs: [{k: md(r[k]) for k in ("category", "case", "outcome", "message")} for r in rs]  # noqa: E731
    lines = [
        f"Measured {machine()}.",
        f"Generated by `{COMMAND}` ({len(rows)} cases in {wall_s:.0f} s; the toy model only, each case in "
        "its own temporary folder). Each case replays a bad input or a fault a learner can cause and says what a "
        "good outcome is; it is then classified: **clear error** (refused, or a run stopped, with a message that "
        "names the culprit: file:line, field, parameter, folder), **handled** (a fault that needs no error, such "
        "as kill -9, Ctrl-C or two writers, left everything whole), **unclear error** (another exception type, "
        "or a message that does not name the culprit), **passed silently**, **lost data** (a file the learner "
        "had changed or deleted, compared byte for byte; model weights changed where they are promised to stay), "
        "**left litter** (temporary or partial files left behind), **not run** (the case's setup failed).",
        "",
        table(totals(rows)),
        "",
    ]
    if bad:
        lines += [f"Cases not \"clear error\" or \"handled\" ({len(bad)}):", "", table(cells(bad)), ""]
    else:
        lines += ["Every case is \"clear error\" or \"handled\".", ""]
    lines += [f"<details><summary>All {len(rows)} cases</summary>", "", table(cells(rows)), "", "</details>"]
    return "\n".join(lines)


def run_all(cases: list[Case], verbose: bool = True) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="labkit-reliability-") as root:
        for i, c in enumerate(cases):
            r = run_case(c, Path(root), i)
            rows.append(r)
            if verbose:
                print(f"[{i + 1:2d}/{len(cases)}] {r['seconds']:5.1f} s  {r['outcome']:<15} {c.category}: {c.name}",
                      flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help='replace the "## Reliability" section of RESULTS.md')
    parser.add_argument("--only", help="run only the cases whose category or name contains this text")
    args = parser.parse_args(argv)
    os.environ.setdefault("LABKIT_PROFILE", "smoke")
    os.environ.setdefault("LABKIT_DEVICE", "cpu")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cases = [c for c in CASES if not args.only or re.search(re.escape(args.only), f"{c.category}: {c.name}", re.I)]
    if not cases:
        raise SystemExit(f"no case matches {args.only!r}")
    start = time.perf_counter()
    rows = run_all(cases)
    wall = time.perf_counter() - start
    print()
    print(table([{k: r[k] for k in ("category", "case", "outcome", "message")} for r in rows]))
    print()
    print(table(totals(rows)))
    print(f"\n{len(rows)} cases in {wall:.0f} s")
    if args.write:
        if args.only:
            raise SystemExit("--write needs every case: leave out --only")
        write_section("Reliability", section(rows, wall))
        print("wrote the Reliability section of", Path(__file__).resolve().parent / "RESULTS.md")


if __name__ == "__main__":
    main()
