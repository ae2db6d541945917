"""Take a fine-tuned model to llama.cpp and Ollama: write it as a GGUF file (F16 or F32, with the
tokenizer and chat template inside), an Ollama ``Modelfile`` beside it, and check the file by
loading it back with transformers' own GGUF loader and comparing predictions.

    merged = serving.merged_model(peft_model)                   # LoRA/DoRA folded into the weights
    path = write_gguf(merged, tok, "outputs/gguf/medical.gguf")  # F16: half the bytes of F32
    write_modelfile(path, tok)                                   # then: ollama create medical -f Modelfile
    check_gguf(path, merged, tok, prompts)                       # same next tokens? same greedy text?

An adapter folder goes the same way: ``adapter_to_gguf(folder, path)`` loads its base in float32,
attaches the adapter, merges and writes. Only the Llama architecture (SmolLM2) is written here:
llama.cpp's own ``convert_hf_to_gguf.py`` covers the rest. The layout follows that script: its
tensor names (``gguf.get_tensor_name_map``), q/k rows permuted for llama.cpp's rotary layout,
1-D tensors (norms) kept in F32, and no ``output.weight`` when the head is tied to the embeddings.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

DTYPES = ("f16", "f32")
# llama.cpp's name for each tokenizer's pre-tokenizer (what its converter picks by hashing the
# tokenizer's output); a model not listed gets "default", llama.cpp's generic GPT-2 split.
PRE_TOKENIZERS = {"HuggingFaceTB/SmolLM2-": "smollm"}
# llama.cpp's token types
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


def check_exportable(model, dtype: str) -> None:
    """Refuse, before any work, what this writer cannot write: raise ``ValueError`` naming why."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: choose 'f16' or 'f32' (quantise afterwards with llama.cpp's "
                         "llama-quantize if you need a smaller file)")
    if hasattr(model, "peft_config"):
        raise ValueError("model still has adapters: merge them first (serving.merged_model(model)), "
                         "or pass the adapter's folder to adapter_to_gguf")
    if getattr(model.config, "model_type", None) != "llama":
        raise ValueError(f"model_type={getattr(model.config, 'model_type', None)!r}: this writer handles the llama "
                         "architecture (SmolLM2) only; use llama.cpp's convert_hf_to_gguf.py for others")
    if getattr(model, "is_quantized", False) or any(getattr(p, "quant_state", None) is not None
                                                     for p in model.parameters()):
        raise ValueError("model has 4-bit/8-bit layers: merge a QLoRA adapter into a float32 base instead "
                         "(adapter_to_gguf(folder, path) does that)")


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's rotary layout for q/k rows (its converter's ``LlamaModel.permute``)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tokenizer_metadata(tokenizer, vocab_size: int) -> dict:
    """Tokens (by id), their types, BPE merges and special ids, as llama.cpp's ``gpt2`` tokenizer
    reads them."""
    vocab = tokenizer.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    special = {i for i, a in tokenizer.added_tokens_decoder.items() if a.special}
    added = set(tokenizer.added_tokens_decoder)
    tokens, types = [], []
    for i in range(vocab_size):
        tokens.append(by_id.get(i, f"[PAD{i}]"))
        types.append(UNUSED if i not in by_id else CONTROL if i in special else USER_DEFINED if i in added else NORMAL)
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"tokenizer type {model.get('type')!r}: only byte-level BPE tokenizers are written here")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return {"tokens": tokens, "types": types, "merges": merges}


def pre_tokenizer_name(hub_id: str | None) -> str:
    return next((pre for prefix, pre in PRE_TOKENIZERS.items() if hub_id and hub_id.startswith(prefix)), "default")


def write_gguf(model, tokenizer, path, dtype: str = "f16", hub_id: str | None = None) -> Path:
    """Write a plain (merged) Llama model and its tokenizer as one GGUF file; return its path.
    ``hub_id`` picks llama.cpp's pre-tokenizer name (:data:`PRE_TOKENIZERS`); it is found from the
    model when it has one (``serving.merged_model`` sets it). A model reloaded from a folder has
    none: pass it, or llama.cpp splits text with its generic rule."""
    import gguf

    from . import files
    from .model_card import base_hub_id

    check_exportable(model, dtype)
    path = Path(path)
    if path.suffix != ".gguf":
        raise ValueError(f"path={str(path)!r}: give the file a .gguf name")
    cfg = model.config
    hub_id = hub_id or base_hub_id(model)
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    rope = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta") or getattr(cfg, "rope_theta", 10000.0)
    tok = tokenizer_metadata(tokenizer, cfg.vocab_size)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    half = dtype == "f16"

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = files.temp_path(path)  # written beside it, renamed into place only once complete
    try:
        writer = gguf.GGUFWriter(str(tmp), "llama")
        writer.add_name(Path(hub_id or getattr(model, "name_or_path", "") or "model").name + " (Fine-Tuning Lab)")
        writer.add_type("model")
        writer.add_context_length(cfg.max_position_embeddings)
        writer.add_embedding_length(cfg.hidden_size)
        writer.add_block_count(cfg.num_hidden_layers)
        writer.add_feed_forward_length(cfg.intermediate_size)
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_kv)
        writer.add_rope_freq_base(float(rope))
        writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        writer.add_rope_dimension_count(head_dim)
        writer.add_vocab_size(cfg.vocab_size)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if half else gguf.LlamaFileType.ALL_F32)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre_tokenizer_name(hub_id))
        writer.add_token_list(tok["tokens"])
        writer.add_token_types(tok["types"])
        writer.add_token_merges(tok["merges"])
        for name, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                          ("unk_token_id", writer.add_unk_token_id), ("pad_token_id", writer.add_pad_token_id)):
            if getattr(tokenizer, name, None) is not None:
                add(getattr(tokenizer, name))
        writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
        if getattr(tokenizer, "chat_template", None):
            writer.add_chat_template(tokenizer.chat_template)
        tied = getattr(cfg, "tie_word_embeddings", False)
        for hf_name, tensor in model.state_dict().items():
            if hf_name == "lm_head.weight" and tied:
                continue  # llama.cpp uses token_embd for the head when output.weight is absent
            name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if name is None:
                raise ValueError(f"tensor {hf_name}: no GGUF name for it in the llama layout")
            w = tensor.detach().to("cpu", torch.float32)
            if hf_name.endswith("q_proj.weight"):
                w = _permute(w, n_head)
            elif hf_name.endswith("k_proj.weight"):
                w = _permute(w, n_kv)
            array = w.numpy().astype(np.float16 if half and w.dim() > 1 else np.float32)
            writer.add_tensor(name, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def adapter_to_gguf(adapter_folder, path, dtype: str = "f16", base: str | None = None):
    """An adapter folder as one merged GGUF file: its base (``base``, else the hub id its config
    records, loaded by ``labkit.load_model``) in float32, the adapter attached and merged. Works for
    LoRA, DoRA and QLoRA adapters (a QLoRA adapter is merged into the full-precision base).
    Returns ``(path, merged_model, tokenizer)``."""
    from . import serving
    from .models import load_model

    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: choose 'f16' or 'f32'")
    config_file = Path(adapter_folder) / serving.CONFIG_FILE
    if not config_file.is_file():
        raise ValueError(f"{config_file}: missing; is {adapter_folder} an adapter folder?")
    config = json.loads(config_file.read_text())
    base_model, tok = load_model(base or config["base_model_name_or_path"])
    model = serving.load_adapter_model(base_model, adapter_folder)
    merged = serving.merged_model(model)
    return write_gguf(merged, tok, path, dtype=dtype), merged, tok


# --- Ollama -----------------------------------------------------------------------------------

CHATML_TEMPLATE = ('{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n'
                   '{{ end }}<|im_start|>assistant\n')


def modelfile_text(gguf_name: str, tokenizer, system: str | None = None) -> str:
    """An Ollama ``Modelfile`` for a GGUF file beside it. SmolLM2 speaks ChatML
    (``<|im_start|>role ... <|im_end|>``); its template is written out in Ollama's Go syntax, with
    ``<|im_end|>`` as the stop word. A tokenizer without ChatML gets no TEMPLATE (write your own)."""
    chatml = "<|im_start|>" in (getattr(tokenizer, "chat_template", None) or "")
    lines = [f"FROM ./{gguf_name}"]
    if chatml:
        lines += [f'TEMPLATE """{CHATML_TEMPLATE}"""', 'PARAMETER stop "<|im_end|>"']
    else:
        lines.append("# no TEMPLATE: this tokenizer does not use ChatML; add the model's prompt format here")
    if system:
        lines.append(f'SYSTEM """{system}"""')
    lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"


def write_modelfile(gguf_path, tokenizer, system: str | None = None) -> Path:
    """``Modelfile`` in the GGUF file's folder; then ``ollama create NAME -f Modelfile`` there."""
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"{gguf_path}: no such GGUF file (write it first with write_gguf)")
    out = gguf_path.parent / "Modelfile"
    out.write_text(modelfile_text(gguf_path.name, tokenizer, system))
    return out


# --- checking the file ------------------------------------------------------------------------

def load_gguf(path, dtype=torch.float32):
    """``(model, tokenizer)`` read back from a GGUF file by transformers' own GGUF loader."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .patches import no_gguf_progress_bar

    path = Path(path)
    with no_gguf_progress_bar():   # a widget in a notebook, blank without a kernel
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype).eval()
    return model, tok


def check_gguf(path, model, tokenizer, prompts, max_new_tokens: int = 12) -> dict:
    """Load ``path`` back and compare it with ``model``: the tokenizer's ids for each prompt, the
    next-token logits (largest difference, same top token) and the greedy replies."""
    from . import serving

    loaded, loaded_tok = load_gguf(path)
    same_ids = all(tokenizer(p)["input_ids"] == loaded_tok(p)["input_ids"] for p in prompts)
    a, b = serving.logits(model, tokenizer, prompts), serving.logits(loaded, loaded_tok, prompts)
    replies = serving.generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
    loaded_replies = serving.generate(loaded, loaded_tok, prompts, max_new_tokens=max_new_tokens)
    return {"file_mib": Path(path).stat().st_size / 2**20, "same_token_ids": same_ids,
            "max_abs_logit_diff": float((a - b).abs().max()),
            "same_next_token": bool((a.argmax(-1) == b.argmax(-1)).all()),
            "same_greedy_replies": replies == loaded_replies, "replies": replies, "gguf_replies": loaded_replies}
