"""Library churn: every keyword labkit passes to transformers, TRL, PEFT, bitsandbytes, accelerate
and datasets must still exist in the installed versions.

TRL, PEFT and transformers rename arguments often (``tokenizer`` became ``processing_class``;
``max_seq_length`` became ``max_length`` in ``SFTConfig``). This test reads every ``labkit/*.py``
with ``ast``, resolves each call to one of those libraries (imported names, ``Class.method``,
subclasses and ``super()`` calls, and a few well-known receivers such as ``tokenizer.`` and
``model.``), and checks each keyword against the callable's signature or dataclass fields, so an
upgrade fails here, naming library, callable and keyword, rather than in a learner's notebook.
Keywords that go into ``**kwargs`` must be read somewhere the library documents (its source
mentions the name), e.g. ``from_pretrained(gguf_file=...)``."""
from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import re
import textwrap
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIBRARIES = ("transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets")

# Instance methods we can resolve by the conventional name of the receiver in labkit's code.
RECEIVERS = {
    "tokenizer": ("transformers.PreTrainedTokenizerBase",),
    "tok": ("transformers.PreTrainedTokenizerBase",),
    "processing_class": ("transformers.PreTrainedTokenizerBase",),
    "model": ("transformers.PreTrainedModel", "transformers.GenerationMixin", "peft.PeftModel"),
    "peft_model": ("peft.PeftModel",),
    "trainer": ("transformers.Trainer",),
    "dataset": ("datasets.Dataset",),
}
# Where a callable's **kwargs end up (checked too when a keyword is not a named parameter).
KWARGS_SINKS = {
    "transformers.models.auto.auto_factory._BaseAutoModelClass.from_pretrained":
        ("transformers.PreTrainedModel.from_pretrained", "transformers.PreTrainedConfig"),
    "transformers.GenerationMixin.generate": ("transformers.GenerationConfig",),
    "transformers.generation.utils.GenerationMixin.generate": ("transformers.GenerationConfig",),
}


def obj_at(dotted: str):
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def qualified(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', getattr(obj, '__name__', '?'))}"


@lru_cache(maxsize=None)
def _strings_in_source(obj) -> frozenset:
    try:
        source = textwrap.dedent(inspect.getsource(obj))
    except (OSError, TypeError):
        return frozenset()
    return frozenset(re.findall(r"""["']([A-Za-z_][A-Za-z0-9_]*)["']""", source)) | frozenset(
        re.findall(r"\b([A-Za-z_][A-Za-z0-9_]*)\s*=", source))


def accepted(obj) -> tuple[set[str], bool]:
    """(named keyword parameters or dataclass fields, whether it takes **kwargs)."""
    names = set()
    if dataclasses.is_dataclass(obj) and isinstance(obj, type):
        names |= {f.name for f in dataclasses.fields(obj) if f.init}
    target = obj.__init__ if isinstance(obj, type) else obj
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return names, True
    names |= {n for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names, any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())


def keyword_problem(obj, keyword: str) -> str | None:
    """None when ``obj`` accepts ``keyword``; otherwise why not."""
    names, var_kw = accepted(obj)
    if keyword in names:
        return None
    if not var_kw:
        return "is not a parameter"
    where = [obj.__init__ if isinstance(obj, type) else obj]
    for sink in KWARGS_SINKS.get(qualified(obj), ()):
        sink_obj = obj_at(sink)
        sink_names, _ = accepted(sink_obj)
        if keyword in sink_names or (isinstance(sink_obj, type) and hasattr(sink_obj(), keyword)):
            return None
        where.append(sink_obj)
    if any(keyword in _strings_in_source(w) for w in where):
        return None
    return "falls into **kwargs, but the library's code never reads it"


# --- finding labkit's calls -------------------------------------------------------------------

@dataclasses.dataclass
class LibraryCall:
    file: str
    line: int
    target: str          # what labkit wrote, e.g. "SFTConfig" or "tokenizer.apply_chat_template"
    objects: list        # candidate library callables (any one accepting a keyword is enough)
    keywords: list[str]

    def where(self) -> str:
        return f"{self.file}:{self.line}"


def _imports(tree) -> dict[str, str]:
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                names[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
    return names


def _has(dotted: str, attr: str) -> bool:
    try:
        return callable(getattr(obj_at(dotted), attr, None))
    except ImportError:
        return False


def _is_library(dotted: str) -> bool:
    return dotted.split(".")[0] in LIBRARIES


def _dict_keys(func_node) -> dict[str, list[str]]:
    """Names bound to ``dict(a=..)`` / ``{"a": ..}`` in a function, with later ``.update(b=..)`` and
    ``name["c"] = ..``: the keywords a ``**name`` splat passes."""
    keys: dict[str, list[str]] = {}
    for node in ast.walk(func_node):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            t, v = node.targets[0], node.value
            if isinstance(t, ast.Name):
                if isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "dict":
                    keys.setdefault(t.id, []).extend(k.arg for k in v.keywords if k.arg)
                elif isinstance(v, ast.Dict):
                    keys.setdefault(t.id, []).extend(
                        k.value for k in v.keys if isinstance(k, ast.Constant) and isinstance(k.value, str))
            elif (isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name)
                  and isinstance(t.slice, ast.Constant) and isinstance(t.slice.value, str)):
                keys.setdefault(t.value.id, []).append(t.slice.value)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "update" and isinstance(node.func.value, ast.Name)):
            keys.setdefault(node.func.value.id, []).extend(k.arg for k in node.keywords if k.arg)
    return keys


def library_calls(source: str, file: str = "<string>") -> list[LibraryCall]:
    tree = ast.parse(source)
    imports = _imports(tree)
    super_bases: dict[str, str] = {}       # labkit class -> library base class (dotted)
    local_bases: dict[str, str] = {}       # the same, for classes that keep the base's __init__
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for b in node.bases:
                if isinstance(b, ast.Name) and b.id in imports and _is_library(imports[b.id]):
                    super_bases[node.name] = imports[b.id]
                    if not any(isinstance(f, ast.FunctionDef) and f.name == "__init__" for f in node.body):
                        local_bases[node.name] = imports[b.id]
    returns_class: dict[str, str] = {}     # labkit function -> the library subclass it returns
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            for r in ast.walk(node):
                if isinstance(r, ast.Return) and isinstance(r.value, ast.Name) and r.value.id in local_bases:
                    returns_class[node.name] = local_bases[r.value.id]

    def resolve(func, enclosing_class) -> tuple[str, list[str]] | None:
        text = ast.unparse(func)
        if isinstance(func, ast.Name):
            if func.id in imports and _is_library(imports[func.id]):
                return text, [imports[func.id]]
            if func.id in local_bases:
                return text, [local_bases[func.id]]
        if isinstance(func, ast.Call) and isinstance(func.func, ast.Name) and func.func.id in returns_class:
            return text, [returns_class[func.func.id]]
        if (isinstance(func, ast.Call) and isinstance(func.func, ast.Name) and func.func.id == "guarded"
                and func.args and isinstance(func.args[0], ast.Name) and func.args[0].id in imports):
            return text, [imports[func.args[0].id]]   # labkit.patches.guarded(Trainer) subclasses it
        if isinstance(func, ast.Attribute):
            base = func.value
            if isinstance(base, ast.Name):
                if base.id in imports and _is_library(imports[base.id]):
                    return text, [f"{imports[base.id]}.{func.attr}"]
                if base.id in local_bases:
                    return text, [f"{local_bases[base.id]}.{func.attr}"]
                if base.id in RECEIVERS:   # a guess from the name: only methods that exist count
                    found = [f"{r}.{func.attr}" for r in RECEIVERS[base.id] if _has(r, func.attr)]
                    return (text, found) if found else None
            if (isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "super"
                    and enclosing_class in super_bases):
                return text, [f"{super_bases[enclosing_class]}.{func.attr}"]
        if isinstance(func, ast.Name) and func.id in RECEIVERS and func.id != "model":
            return text, [f"{r}.__call__" for r in RECEIVERS[func.id]]
        return None

    calls = []

    def visit(node, enclosing_class=None, splats=None):
        if isinstance(node, ast.ClassDef):
            enclosing_class = node.name
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            splats = _dict_keys(node)
        if isinstance(node, ast.Call):
            found = resolve(node.func, enclosing_class)
            if found:
                keywords = [k.arg for k in node.keywords if k.arg]
                for k in node.keywords:
                    if k.arg is None and isinstance(k.value, ast.Name):
                        keywords += (splats or {}).get(k.value.id, [])
                objects = []
                for dotted in found[1]:
                    try:
                        objects.append(obj_at(dotted))
                    except (ImportError, AttributeError):
                        objects.append(dotted)          # missing: reported by the test
                calls.append(LibraryCall(file, node.lineno, found[0], objects, keywords))
        for child in ast.iter_child_nodes(node):
            visit(child, enclosing_class, splats)

    visit(tree)
    return calls


def problems(calls: list[LibraryCall]) -> list[str]:
    out = []
    for call in calls:
        present = [o for o in call.objects if not isinstance(o, str)]
        if not present:
            out.append(f"{call.where()}: {call.target}: {' / '.join(call.objects)} no longer exists "
                       f"in the installed {call.objects[0].split('.')[0]}")
            continue
        for kw in call.keywords:
            why = [keyword_problem(o, kw) for o in present]
            if all(why):
                lib = qualified(present[0]).split(".")[0]
                out.append(f"{call.where()}: {lib} {qualified(present[0])} does not accept "
                           f"keyword {kw!r} ({why[0]}); installed {lib} {_version(lib)}")
    return out


def _version(lib: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(lib)
    except md.PackageNotFoundError:
        return "?"


LABKIT_FILES = sorted((ROOT / "labkit").glob("*.py"))


@pytest.fixture(scope="module")
def all_calls():
    calls = []
    for path in LABKIT_FILES:
        calls += library_calls(path.read_text(), str(path.relative_to(ROOT)))
    return calls


def test_every_keyword_labkit_passes_to_the_libraries_still_exists(all_calls):
    found = problems(all_calls)
    assert not found, "API drift (update labkit or the tested version ranges):\n" + "\n".join(found)


SFT_CALL = "guarded(SFTTrainer, model_loss_on_cpu=cfg.cpu_full_logits, float32_adapter_sums=cfg.adapter_sums_fp32)"


def test_the_drift_check_sees_labkits_main_calls(all_calls):
    """Guard against a checker that silently finds nothing."""
    targets = {c.target for c in all_calls}
    for expected in ("SFTConfig", "LoraConfig", "BitsAndBytesConfig", "AutoModelForCausalLM.from_pretrained",
                     "AutoTokenizer.from_pretrained", SFT_CALL, "guarded(RewardTrainer)",
                     "guarded(GRPOTrainer, full_logits=cfg.cpu_full_logits, float32_adapter_sums=cfg.adapter_sums_fp32)",
                     "guarded(DPOTrainer, full_logits=cfg.cpu_full_logits, float32_adapter_sums=cfg.adapter_sums_fp32)"):
        assert expected in targets, f"the drift check no longer sees labkit's {expected}(...) call"
    keywords = {k for c in all_calls if c.target == "AutoModelForCausalLM.from_pretrained" for k in c.keywords}
    assert {"gguf_file", "dtype", "quantization_config", "device_map"} <= keywords  # incl. **kwargs splats
    sft = next(c for c in all_calls if c.target == SFT_CALL)
    assert "processing_class" in sft.keywords


def test_renamed_arguments_fail_with_a_clear_message():
    old_code = textwrap.dedent("""
        from trl import SFTConfig, SFTTrainer
        from peft import LoraConfig
        def go(model, tok, data):
            args = SFTConfig(output_dir="x", max_seq_length=128)
            kw = dict(r=8)
            kw.update(lora_rank=4)
            LoraConfig(**kw)
            return SFTTrainer(model=model, args=args, train_dataset=data, tokenizer=tok)
    """)
    found = "\n".join(problems(library_calls(old_code, "old.py")))
    assert "trl.trainer.sft_config.SFTConfig does not accept keyword 'max_seq_length'" in found
    assert "SFTTrainer" in found and "'tokenizer'" in found
    assert "LoraConfig" in found and "'lora_rank'" in found and "'r'" not in found
    assert "old.py:5" in found


def test_removed_class_is_reported():
    found = problems(library_calls("from trl import NoSuchConfig\nNoSuchConfig(x=1)\n", "gone.py"))
    assert found and "trl.NoSuchConfig no longer exists" in found[0]


def test_kwargs_keywords_are_checked_against_where_they_go():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert keyword_problem(AutoModelForCausalLM.from_pretrained, "gguf_file") is None
    assert keyword_problem(AutoModelForCausalLM.from_pretrained, "dtype") is None
    assert keyword_problem(AutoTokenizer.from_pretrained, "gguf_file") is None
    assert keyword_problem(AutoModelForCausalLM.from_pretrained, "torch_dtyp_typo") is not None


# --- version ranges: one set of ranges, written in three places ---------------------------------

def _ranges(lines):
    from packaging.requirements import Requirement

    out = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            out[req.name.lower()] = req.specifier
    return out


def test_tested_version_ranges_agree_across_requirements_pyproject_and_environment():
    import tomllib

    req = _ranges((ROOT / "requirements.txt").read_text().splitlines())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pyproject = _ranges(project["dependencies"] + [d for ds in project.get("optional-dependencies", {}).values()
                                                   for d in ds])
    yml = (ROOT / "environment.yml").read_text()
    env = _ranges(l.strip()[2:] for l in yml.split("- pip:")[1].splitlines() if l.strip().startswith("- "))
    assert env == req, "environment.yml's pip list differs from requirements.txt"
    for name, spec in pyproject.items():
        assert name in req, f"{name} is a labkit dependency but missing from requirements.txt"
        if name == "torch":   # requirements pins the lab machines' CPU build; it must satisfy labkit's range
            pinned = next(iter(req[name])).version
            assert spec.contains(pinned), f"torch=={pinned} is outside labkit's range {spec}"
        else:
            assert spec == req[name], f"{name}: pyproject.toml says {spec}, requirements.txt says {req[name]}"
    for lib in ("transformers", "trl", "peft"):
        assert "<" in str(req[lib]), f"{lib} needs an upper bound: it renames arguments between versions"


def test_installed_versions_are_the_tested_ones():
    import importlib.metadata as md

    req = _ranges((ROOT / "requirements.txt").read_text().splitlines())
    wrong = []
    for lib in LIBRARIES:
        v = md.version(lib)
        if not req[lib].contains(v.split("+")[0]):
            wrong.append(f"{lib} {v} is outside the tested range {req[lib]}")
    assert not wrong, "\n".join(wrong)
