"""Code that runs on the CPU must also run when the model is on a GPU, and say what it measured.

On a machine without a GPU every tensor is on the CPU, so a tensor made without ``device=``, or
``.numpy()`` on a model's output, never fails there; on a GPU both raise. These checks find that
class of bug without a GPU, in seconds:

1. A static scan of every notebook code cell and every labkit module for
   - tensor factories (``torch.randn``, ``zeros``, ``tensor``, ``arange``, ...) and layers
     (``nn.Linear``, ...) made without ``device=`` and not moved at once with ``.to(...)``
     (``*_like`` factories take their input's device and are left alone);
   - ``.numpy()`` on an expression that is not visibly on the CPU: one with ``.cpu()`` in it, a
     factory without ``device=``, or a name assigned from such an expression in the same
     top-level function or class (in a notebook: in any cell).
   ``ALLOWED`` lists the few CPU-only ones, each with its reason.
2. A runtime check of the labkit functions that feed a model or read its weights: a
   ``TorchFunctionMode`` pretends that the model's parameters live on an accelerator. It tags them,
   carries the tag through every torch operation, and raises where a tagged tensor meets an
   untagged CPU tensor (0-dim ones excepted: PyTorch allows those) and on ``.numpy()`` of a tagged
   tensor. ``device=`` and ``.to()`` with a ``torch.device`` (what ``model.device`` gives) or a
   device name other than ``"cpu"`` tag their result; ``.cpu()`` and ``"cpu"`` untag it.
3. Peak memory on a simulated GPU (fake CUDA counters): measured from a reset baseline, the
   weights counted once, and labelled with what was measured.

What they cannot catch:
- The scan follows names, not values: a name assigned from a CPU tensor anywhere in its
  function counts as on the CPU everywhere in it. It does not see tensors made by other libraries
  (a tokenizer's ``return_tensors="pt"``), ``np.asarray(tensor)``, or device code in tools/,
  benchmarks/ and tests/.
- The runtime check runs only the functions listed below, on the toy model's code paths (fp32, no
  4-bit weights), and no training: the Trainer moves batches itself, and tensors made inside C++
  (autograd's gradients) carry no tag. It takes any ``torch.device`` object for the model's device,
  so ``device=torch.device("cpu")`` written out would pass unseen; it does not check the
  operations PyTorch allows across devices (``copy_``, ``to``, indexing).
- Nothing here exercises a real GPU: unsupported dtypes (bf16 on old GPUs), out-of-memory,
  bitsandbytes' CUDA kernels, the real memory figures.
"""
from __future__ import annotations

import ast
import functools
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

ROOT = Path(__file__).resolve().parent.parent
FACTORIES = {"tensor", "as_tensor", "from_numpy", "zeros", "ones", "empty", "full", "arange", "linspace",
             "logspace", "eye", "rand", "randn", "randint", "randperm"}
LAYERS = {"Linear", "Bilinear", "Embedding", "Conv1d", "Conv2d", "LayerNorm", "RMSNorm", "MultiheadAttention"}

# (file, the call as written): why it may stay on the CPU.
ALLOWED = {
    ("learning_rate.py", "torch.zeros(1)"): "a dummy parameter for the scheduler to step; it never meets a model",
    ("predictions.py", 'torch.tensor(table["probability"].values)'):
        "top-k probabilities from a pandas table, sampled on the CPU",
    ("widgets.py", 'torch.tensor(table["probability"].values)'):
        "top-k probabilities from a pandas table, sampled on the CPU",
    ("scoring.py", "torch.empty(0, 384)"): "the sentence embedder runs on the CPU (load_embedder never moves it)",
    ("02_weights_are_knobs.ipynb", "torch.randn(*s, generator=g)"):
        "a random matrix to compare spectra with; the weight snapshots it is compared with are on the CPU too",
}


# --- 1. the static scan ---------------------------------------------------------------------------

def _dotted(node) -> str:
    return f"{_dotted(node.value)}.{node.attr}" if isinstance(node, ast.Attribute) else getattr(node, "id", "")


def _kind(call: ast.Call) -> str | None:
    """Which kind of call the scan looks at this is: factory, layer, numpy, or None."""
    name = _dotted(call.func)
    if name.startswith("torch.") and name.split(".")[-1] in FACTORIES and name.count(".") == 1:
        return "factory"
    if name.split(".")[-1] in LAYERS and name.split(".")[-2:-1] == ["nn"]:
        return "layer"
    if isinstance(call.func, ast.Attribute) and call.func.attr == "numpy" and not call.args:
        return "numpy"
    return None


def _on_cpu(expr, cpu_names: set[str]) -> bool:
    for node in ast.walk(expr):
        if isinstance(node, ast.Name) and node.id in cpu_names:
            return True
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr == "cpu" or (node.func.attr == "to" and node.args and
                                            getattr(node.args[0], "value", None) == "cpu"):
                return True
            if _kind(node) == "factory" and not any(k.arg == "device" for k in node.keywords):
                return True
    return False


def _cpu_names(trees) -> set[str]:
    """Names assigned (anywhere in ``trees``) from an expression on the CPU, to a fixed point."""
    assigns = [n for t in trees for n in ast.walk(t) if isinstance(n, ast.Assign)]
    names: set[str] = set()
    while True:
        new = {t.id for a in assigns if _on_cpu(a.value, names)
               for target in a.targets for t in ast.walk(target) if isinstance(t, ast.Name)} - names
        if not new:
            return names
        names |= new


def _findings(trees, sources) -> list[tuple[str, str]]:
    """(the call as written, what is wrong) for each suspicious call in one scope."""
    cpu_names = _cpu_names(trees)
    out = []
    for tree, source in zip(trees, sources):
        moved = {id(n.func.value) for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Attribute) and n.func.attr in ("to", "cuda")}
        for node in ast.walk(tree):
            kind = isinstance(node, ast.Call) and _kind(node)
            if kind in ("factory", "layer") and id(node) not in moved and \
                    not any(k.arg == "device" for k in node.keywords):
                out.append((ast.get_source_segment(source, node), f"{kind} without device="))
            elif kind == "numpy" and not _on_cpu(node.func.value, cpu_names):
                out.append((ast.get_source_segment(source, node), ".numpy() not visibly on the CPU"))
    return out


def _notebook_scope(path: Path):
    from IPython.core.inputtransformer2 import TransformerManager

    cells = [TransformerManager().transform_cell(c.source) for c in nbformat.read(path, as_version=4).cells
             if c.cell_type == "code"]
    return [ast.parse(c) for c in cells], cells


def _module_scopes(path: Path):
    """Each top-level function or class of a module is one scope; module-level code another."""
    source = path.read_text()
    tree = ast.parse(source)
    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    rest = ast.Module(body=[n for n in tree.body if n not in defs], type_ignores=[])
    return [([d], [source]) for d in defs] + [([rest], [source])]


@functools.cache
def scan() -> list[tuple[str, str, str]]:
    """(file name, the call as written, what is wrong) for the whole lab."""
    found = []
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        found += [(path.name, *f) for f in _findings(*_notebook_scope(path))]
    for path in sorted((ROOT / "labkit").glob("*.py")):
        found += [(path.name, *f) for trees, sources in _module_scopes(path) for f in _findings(trees, sources)]
    return found


def test_notebooks_and_labkit_put_tensors_on_the_models_device():
    flagged = [f for f in scan() if f[:2] not in ALLOWED]
    assert not flagged, "tensors the model's device may not see (add device= or .cpu()):\n" + \
        "\n".join(f"  {file}: {call}  ({why})" for file, call, why in flagged)


def test_every_allowed_cpu_tensor_still_exists():
    found = {f[:2] for f in scan()}
    assert not set(ALLOWED) - found, "stale ALLOWED entries"


@pytest.mark.parametrize("code, flagged", [
    ("x = torch.randn(3, 4)\nlayer(x)", ["torch.randn(3, 4)"]),
    ("x = torch.randn(3, 4, device=w.device)", []),
    ("x = torch.tensor(ids).to(device)", []),
    ("layer = torch.nn.Linear(4, 4)", ["torch.nn.Linear(4, 4)"]),
    ("m = model.weight.detach()\nm.numpy()", ["m.numpy()"]),
    ("w = model.weight.detach().cpu()\nm, d = split(w)\nm.numpy()", []),
    ("model(x).logits.cpu().numpy()", []),
])
def test_the_scan_flags_what_it_should(code, flagged):
    trees = [ast.parse(code)]
    assert [call for call, _ in _findings(trees, [code])] == flagged


# --- 2. the runtime check: a pretend accelerator ----------------------------------------------------

ACCEL, HOST = "accelerator", "cpu"
# allowed across devices (or only moving a tensor, as Module.to does with t.data = moved)
CROSS_DEVICE_OK = {"to", "copy_", "__getitem__", "__setitem__", "cpu", "cuda", "__set__",
                   "_has_compatible_shallow_copy_type"}


class DeviceMixing(RuntimeError):
    pass


def where(t) -> str | None:
    return getattr(t, "_fake_device", None)


def _requested(name, args, kwargs) -> str | None:
    """The device a call asks for: ACCEL, HOST or None (none asked)."""
    if name == "cpu":
        return HOST
    if name == "cuda":
        return ACCEL
    asked = [kwargs.get("device")] + (list(args[1:]) if name == "to" else [])
    for a in asked:
        if isinstance(a, torch.Tensor):
            return where(a)
        if isinstance(a, str):
            return HOST if a.startswith("cpu") else ACCEL
        if isinstance(a, torch.device):
            return ACCEL
    return None


class FakeAccelerator(TorchFunctionMode):
    """Raise where a tensor on the (pretend) accelerator meets a CPU tensor, or goes to numpy."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        tags = {where(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor) and t.dim() > 0}
        if name in ("numpy", "__array__") and where(args[0]) == ACCEL:
            raise DeviceMixing(".numpy() of a tensor on the model's device: call .cpu() first")
        if {ACCEL, HOST} <= tags and name not in CROSS_DEVICE_OK:
            raise DeviceMixing(f"{name}(): a CPU tensor meets a tensor on the model's device")
        out = func(*args, **kwargs)
        if name == "__set__" and where(args[1]):  # t.data = moved: t now lives where moved does
            args[0]._fake_device = where(args[1])
        tag = _requested(name, args, kwargs)
        if tag is None and name in FACTORIES:
            tag = HOST
        if tag is None:
            tag = ACCEL if ACCEL in tags else HOST if HOST in tags else None
        if tag and any(out is a for a in args) and tag != where(out):
            out = out.clone()  # a real move makes a copy; never re-tag the tensor it was called on
        for t in tree_flatten(out)[0]:
            if tag and isinstance(t, torch.Tensor):
                t._fake_device = tag
        return out


def on_accelerator(model):
    """Pretend the model was moved to the accelerator: tag its parameters and buffers."""
    for t in [*model.parameters(), *model.buffers()]:
        t._fake_device = ACCEL
    return model


@pytest.fixture
def accelerator(monkeypatch):
    """The pretend accelerator, on for the whole test; returns ``on_accelerator``."""
    new = torch.nn.Parameter.__new__

    def parameter(cls, data=None, requires_grad=True):  # nn.Parameter(t) is a new object: keep t's tag
        p = new(cls, data, requires_grad)
        if where(data):
            p._fake_device = where(data)
        return p

    monkeypatch.setattr(torch.nn.Parameter, "__new__", parameter)
    with FakeAccelerator():
        yield on_accelerator


def test_the_pretend_accelerator_raises_where_a_gpu_would(accelerator, toy):
    model, _ = toy
    q = accelerator(model).model.layers[0].self_attn.q_proj
    with pytest.raises(DeviceMixing, match="CPU tensor meets"):
        q(torch.randn(2, q.in_features))
    with pytest.raises(DeviceMixing, match="numpy"):
        q.weight.detach().numpy()
    q(torch.randn(2, q.in_features, device=q.weight.device))
    q(torch.randn(2, q.in_features).to(q.weight.device))
    assert q.weight.detach().cpu().numpy().shape == (q.out_features, q.in_features)
    assert where(q.weight.cpu()) == HOST and where(q.weight) == ACCEL  # moving a copy leaves q.weight


CHATS = [{"messages": [{"role": "user", "content": "Add one and two."},
                       {"role": "assistant", "content": "One plus two is three."}]}]
CLOZE = [{"prompt": "The capital of France is", "answer": " Paris"}]
SENSES = [{"word": "discharge", "sense": "medical", "prompt": "The patient was ready for",
           "continuation": " discharge."}]


def _lora_layer(model, tok):
    from labkit.lora import LoRALinear

    q = model.model.layers[0].self_attn.q_proj
    return LoRALinear(q, r=2, alpha=4)(torch.randn(2, q.in_features, device=q.weight.device))


def _wrapped(model, tok):
    from labkit import lora, predictions

    lora.wrap_linears(model, ["q_proj", "v_proj"], r=2)
    return predictions.next_token_logits(model, tok, "The capital")


def _peft(method):
    def run(model, tok):
        from labkit import predictions
        from labkit.training import TrainConfig, prepare_model

        return predictions.next_token_logits(prepare_model(model, TrainConfig(method=method, lora_r=2)), tok, "Hi")
    return run


def _reward(model, tok):
    from transformers import LlamaForSequenceClassification

    from labkit import rlhf

    reward_model = LlamaForSequenceClassification(model.config.__class__(**{**model.config.to_dict(), "num_labels": 1}))
    return rlhf.reward_scores(on_accelerator(reward_model), tok, ["Hi"], ["Hello there."])


def _weights(model, tok):
    from labkit import lora, weights

    name = "model.layers.0.self_attn.q_proj.weight"
    before = weights.snapshot(model, [name])
    weights.histogram(model, name)
    weights.spectrum_table(before, model, [name])
    start = lora.snapshot_weights(model)
    return [lora.magnitude_direction_change(start[k], w) for k, w in lora.snapshot_weights(model).items()]


def _quantization(model, tok):
    from labkit import quantization

    w = model.model.layers[0].mlp.up_proj.weight
    quantization.round_trip(w, blocksize=64)
    return quantization.weight_histogram(w, blocksize=64)


def _calls():
    from labkit import compare, predictions, probes, rlhf, scoring, serving

    return {
        "predictions.next_token_distribution": lambda m, t: predictions.next_token_distribution(m, t, "The capital"),
        "predictions.continuation_table": lambda m, t: predictions.continuation_table(m, t, "The capital is", [" Paris", " Rome"]),
        "predictions.perplexity": lambda m, t: predictions.perplexity(m, t, ["The capital of France is Paris.", "One, two."]),
        "predictions.generate": lambda m, t: predictions.generate(m, t, "Hi", chat=True, max_new_tokens=3),
        "predictions.sample_step": lambda m, t: predictions.sample_step(m, t, "The", generator=torch.Generator().manual_seed(0)),
        "probes.cloze_accuracy": lambda m, t: probes.cloze_accuracy(m, t, CLOZE),
        "probes.sense_table": lambda m, t: probes.sense_table(m, t, SENSES),
        "compare.heldout_scores": lambda m, t: compare.heldout_scores(m, t, CHATS),
        "probes.reply_loss": lambda m, t: probes.reply_loss(m, t, CHATS),
        "rlhf.sample_responses": lambda m, t: rlhf.sample_responses(m, t, ["Hi"], n=2, max_new_tokens=3),
        "rlhf.reward_scores": _reward,
        "scoring.generate_batch": lambda m, t: scoring.generate_batch(m, t, ["Hi", "Add one and two."], max_new_tokens=3),
        "serving.logits": lambda m, t: serving.logits(m, t, ["Hi", "Add one and two."]),
        "lora.LoRALinear": _lora_layer,
        "lora.wrap_linears": _wrapped,
        "training.prepare_model(lora)": _peft("lora"),
        "training.prepare_model(dora)": _peft("dora"),
        "weights and lora snapshots": _weights,
        "quantization.round_trip": _quantization,
    }


@pytest.mark.parametrize("name", list(_calls()))
def test_labkit_keeps_to_the_models_device(name, accelerator, toy):
    model, tok = toy
    _calls()[name](accelerator(model), tok)


# --- 3. peak memory on a (simulated) GPU -----------------------------------------------------------

class FakeCuda:
    """PyTorch's CUDA memory counters, in MiB, with ``allocate``/``free`` to move them."""

    def __init__(self, in_use_mb: float):
        self.in_use = self.peak = in_use_mb * 2**20

    def allocate(self, mb):
        self.in_use += mb * 2**20
        self.peak = max(self.peak, self.in_use)

    def free(self, mb):
        self.in_use -= mb * 2**20

    def reset_peak_memory_stats(self, device=None):
        self.peak = self.in_use


def fake_cuda(monkeypatch):
    """A GPU for PyTorch's memory counters only (nothing runs on it), with 1000 MiB in use."""
    cuda = FakeCuda(1000)
    for name, fn in {"is_available": lambda: True, "synchronize": lambda device=None: None,
                     "reset_peak_memory_stats": cuda.reset_peak_memory_stats,
                     "memory_allocated": lambda device=None: cuda.in_use,
                     "max_memory_allocated": lambda device=None: cuda.peak}.items():
        monkeypatch.setattr(torch.cuda, name, fn)
    return cuda


def test_peak_memory_on_a_gpu_starts_from_a_reset_baseline(monkeypatch):
    from labkit.memory import PeakMemory, measure, peak_label

    cuda = fake_cuda(monkeypatch)
    cuda.allocate(500)
    cuda.free(500)  # an earlier peak, before the block: not this block's
    with PeakMemory() as m:
        cuda.allocate(30)
        cuda.free(30)
    assert (m.start_mb, m.peak_mb, m.delta_mb) == (1000, 1030, 30)
    assert "CUDA" in measure() and "CUDA" in peak_label() and "RSS" in measure("cpu")


def test_compared_methods_count_the_weights_once_on_a_gpu(monkeypatch, toy, tmp_path):
    from labkit import compare, profile
    from labkit.memory import PeakMemory
    from labkit.models import footprint_bytes

    model, tok = toy
    weights_mb = footprint_bytes(model) / 2**20
    smoke = profile("smoke")
    cuda = fake_cuda(monkeypatch)  # 1000 MiB in use: other models, say (the toy's weights are on the CPU)

    def train(model, tok, data, cfg, **kw):  # what labkit.train measures: PeakMemory around the steps
        with PeakMemory() as memory:
            cuda.allocate(200)  # gradients, optimizer state, activations
            cuda.free(200)
        return SimpleNamespace(model=model, config=cfg, history=SimpleNamespace(
            peak_memory_mb=memory.peak_mb, rows=[], losses=[], stopped="finished"))

    monkeypatch.chdir(tmp_path)
    for name, value in {"load_model": lambda **kw: (model, tok), "train": train,
                        "task_data": lambda p: (CHATS, CHATS, CLOZE), "save_checkpoint": lambda *a: 0,
                        "heldout_scores": lambda *a: {"heldout_loss": 1.0, "heldout_scores": [[1.0, 1]]}, "cloze_accuracy": lambda *a: 0.5}.items():
        monkeypatch.setattr(compare, name, value)
    result = compare.run_method("lora", smoke, save=False)
    assert result["peak_memory_mb"] == pytest.approx(weights_mb + 200)
    assert "CUDA" in result["peak_memory_measure"]
