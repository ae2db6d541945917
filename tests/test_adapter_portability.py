"""Issue #20, item 1: an adapter the lab saves names its base by hub id, carries a model card, and
loads with plain PEFT in a fresh process that never imports labkit, giving the same predictions.

How the fresh process finds the base without a network, and why: the adapter records the hub id
``HuggingFaceTB/SmolLM2-135M-Instruct`` (what vLLM or a hub user loads). Offline that id is not in
any cache, so the process is given the base in the two ways PEFT and transformers document:
(1) explicitly, ``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(<local copy>),
adapter)``; (2) ``AutoPeftModelForCausalLM.from_pretrained(adapter)`` with ``HF_HUB_OFFLINE=1`` and
``HF_HUB_CACHE`` pointing at a throwaway cache laid out as the hub's (``models--org--name/refs/main``
and ``snapshots/<revision>/``) whose files link to the lab's local copy. (2) proves the recorded id is
the one AutoPeftModel resolves; the weights it finds are the lab's dequantised copy, not the
original ones, which is why the card says so.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from labkit import serving
from labkit.model_card import adapter_card, base_hub_id, gguf_tensor_types, local_weights_note, prediction_gap
from labkit.toy import toy_model

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
PROMPTS = ["The capital of France is", "def add(a, b):"]

FRESH = textwrap.dedent('''
    import json, sys, torch
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    adapter, local_base, prompts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    tok = AutoTokenizer.from_pretrained(local_base)
    tok.padding_side = "left"
    batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    out = {}
    explicit = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(local_base), adapter).eval()
    auto = AutoPeftModelForCausalLM.from_pretrained(adapter).eval()
    with torch.no_grad():
        for name, model in (("explicit", explicit), ("auto", auto)):
            out[name] = model(**batch).logits[:, -1, :].float().tolist()
    out["auto_base"] = auto.get_base_model().name_or_path
    out["labkit_imported"] = "labkit" in sys.modules
    print("RESULT" + json.dumps(out))
''')


def hub_cache_with(local_folder, hub_id, cache):
    """The hub cache layout (``models--org--name``) for ``hub_id``, its files linked to ``local_folder``."""
    repo = cache / ("models--" + hub_id.replace("/", "--"))
    snapshot = repo / "snapshots" / "labkit-local-copy"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("labkit-local-copy")
    for f in local_folder.iterdir():
        (snapshot / f.name).symlink_to(f)
    return cache


def random_lora(model, seed=0, **kw):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False, **kw)
    return get_peft_model(model, cfg).eval()


@pytest.mark.model
def test_a_saved_adapter_loads_in_plain_peft_in_a_fresh_process_with_the_same_predictions(tmp_path):
    import labkit

    model, tok = labkit.load_model()
    local_base = model.name_or_path
    peft_model = random_lora(model)
    info = {"notebook": "test", "data": {"file": "data/instructions.jsonl", "records": 12},
            "prompt_format": "alpaca", "template": "### Instruction:\n{instruction}\n\n### Response:\n",
            "train": {"method": "lora", "learning_rate": 2e-4, "steps": 3}, "results": {"held-out loss": 1.23}}
    folder = serving.save_adapter(peft_model, tmp_path / "adapter", info=info)
    expected = serving.logits(peft_model, tok, PROMPTS, chat=False)

    config = json.loads((folder / serving.CONFIG_FILE).read_text())
    assert config["base_model_name_or_path"] == HUB_ID           # not the local cache folder
    card = (folder / serving.CARD_FILE).read_text()
    assert f"base_model: {HUB_ID}" in card and "library_name: peft" in card
    for says in ("data/instructions.jsonl", "**alpaca**", "### Instruction:", "| held-out loss | 1.23 |",
                 "| learning_rate | 0.0002 |", "| r | 4 |", "dequantised from a 4-bit GGUF", "not measured"):
        assert says in card, says
    note = local_weights_note(HUB_ID)
    assert f"{note['four_bit_tensors']} of {note['tensors']} tensors are 4-bit" in card

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PYTHONPATH"))}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(hub_cache_with(serving.Path(local_base), HUB_ID,
                                                                    tmp_path / "hub")),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", FRESH, str(folder), local_base, json.dumps(PROMPTS)],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.split("RESULT", 1)[1])
    assert out["labkit_imported"] is False
    assert HUB_ID.replace("/", "--") in out["auto_base"] or out["auto_base"] == HUB_ID
    for way in ("explicit", "auto"):
        torch.testing.assert_close(torch.tensor(out[way]), expected, atol=1e-4, rtol=1e-4)
    with peft_model.disable_adapter():
        assert not torch.allclose(serving.logits(peft_model, tok, PROMPTS, chat=False), expected, atol=1e-3)


def test_the_offline_models_note_counts_four_bit_tensors_in_the_packaged_file():
    note = local_weights_note(HUB_ID)
    assert note is not None and note["file"].endswith(".gguf")
    assert 0 < note["four_bit_tensors"] < note["tensors"] == sum(note["tensor_types"].values())
    assert note["prediction_gap"] is None and "not available offline" in note["why_not_measured"]
    assert local_weights_note("HuggingFaceTB/SmolLM2-360M") is None  # loaded from its original weights


def test_base_hub_id_of_registry_names_hub_ids_and_local_folders(tmp_path):
    from labkit.models import OFFLINE_MODEL, converted_path, REGISTRY

    model, _ = toy_model()
    for name, expected in ((OFFLINE_MODEL, HUB_ID), (HUB_ID, HUB_ID), ("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B"),
                           (str(converted_path(REGISTRY[OFFLINE_MODEL])), HUB_ID),
                           (str(tmp_path), None), ("", None), ("not a hub id!", None)):
        model.name_or_path = name
        assert base_hub_id(model) == expected, name


def test_a_card_without_a_hub_id_or_run_details_says_what_is_missing():
    card = adapter_card({"base_model_name_or_path": "/home/me/models/x", "r": 8, "lora_alpha": 16, "use_dora": True})
    assert card.startswith("---\nlibrary_name: peft\ntags:\n- dora")
    assert "base_model:" not in card and "a local folder, not a hub id" in card
    assert card.count("Not recorded") == 3   # data, prompt format, results
    qlora = adapter_card({"base_model_name_or_path": HUB_ID}, {"train": {"method": "qlora"}})
    assert qlora.startswith("---\nlibrary_name: peft\nbase_model: " + HUB_ID) and "# QLoRA adapter" in qlora


def test_prediction_gap_is_zero_for_one_model_and_grows_with_noise():
    model, tok = toy_model()
    same = prediction_gap(model, model, tok, PROMPTS)
    assert same == {"prompts": 2, "same_next_token": 1.0, "mean_kl_nats": 0.0, "max_abs_logit_diff": 0.0}
    noisy, _ = toy_model()
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    gap = prediction_gap(model, noisy, tok, PROMPTS)
    assert gap["mean_kl_nats"] > 0 and gap["max_abs_logit_diff"] > 0
    with pytest.raises(ValueError, match="prompts is empty"):
        prediction_gap(model, noisy, tok, [])


def test_save_adapter_on_the_toy_model_keeps_its_local_name_and_still_writes_a_card(tmp_path):
    model, _ = toy_model()
    model.name_or_path = str(tmp_path / "my-toy")
    folder = serving.save_adapter(random_lora(model), tmp_path / "a")
    config = json.loads((folder / serving.CONFIG_FILE).read_text())
    assert config["base_model_name_or_path"] == str(tmp_path / "my-toy")
    assert "a local folder, not a hub id" in (folder / serving.CARD_FILE).read_text()


def test_an_adapter_on_the_converted_offline_model_records_the_hub_id_not_the_cache_folder(tmp_path):
    """The same path as the real model's (its ``name_or_path`` is the cache folder), on the toy."""
    from labkit.models import OFFLINE_MODEL, REGISTRY, converted_path

    model, _ = toy_model()
    model.name_or_path = str(converted_path(REGISTRY[OFFLINE_MODEL]))
    info = {"prompt_format": "chat", "data": {"file": "data/domains/medical.jsonl"}, "results": {"last loss": 2.5}}
    folder = serving.save_adapter(random_lora(model), tmp_path / "a", info=info)
    assert json.loads((folder / serving.CONFIG_FILE).read_text())["base_model_name_or_path"] == HUB_ID
    card = (folder / serving.CARD_FILE).read_text()
    assert f"base_model: {HUB_ID}" in card and "dequantised from a 4-bit GGUF" in card and "**chat**" in card
    assert "data/domains/medical.jsonl" in card and "| last loss | 2.5 |" in card
    serving.validate_adapter(folder, model)   # the hub id still matches the local copy it was made on


def test_gguf_tensor_types_reads_the_header_as_ggufs_own_reader_does(tmp_path):
    from collections import Counter

    from gguf import GGUFReader

    from labkit.gguf_export import write_gguf

    model, tok = toy_model()
    path = write_gguf(model, tok, tmp_path / "toy.gguf", dtype="f16")   # arrays of strings and ints inside
    assert gguf_tensor_types(path) == dict(Counter(t.tensor_type.name for t in GGUFReader(path).tensors))
    assert set(gguf_tensor_types(path)) == {"F16", "F32"}
    (tmp_path / "not.gguf").write_bytes(b"GGML" + bytes(20))
    with pytest.raises(ValueError, match="not a GGUF file"):
        gguf_tensor_types(tmp_path / "not.gguf")
