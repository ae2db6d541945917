"""Issue #20, item 2: the ways out of the lab for a fine-tuned model. Merged and saved in the
transformers format; written as GGUF for llama.cpp and Ollama and read back by transformers' own
GGUF loader; pushed to the hub (up to the upload, with a fake HfApi); and refused where a server
would refuse it (DoRA on vLLM)."""
import json

import pytest
import torch

from labkit import gguf_export, serving
from labkit.toy import toy_model

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
PROMPTS = ["The capital of France is", "Write a poem about summer."]


def random_lora(model, seed=0, **kw):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"], init_lora_weights=False, **kw)
    return get_peft_model(model, cfg).eval()


@pytest.fixture(scope="module")
def real_adapter(tmp_path_factory):
    """The real model with a random (non-zero) LoRA on q, k and v (q and k test the GGUF
    permutation), and that adapter saved."""
    import labkit

    model, tok = labkit.load_model()
    peft_model = random_lora(model)
    folder = serving.save_adapter(peft_model, tmp_path_factory.mktemp("exits") / "adapter",
                                  info={"notebook": "test", "train": {"method": "lora"}})
    return peft_model, tok, folder


@pytest.mark.model
def test_merge_and_save_in_the_transformers_format_gives_the_adapters_predictions(real_adapter, tmp_path):
    from transformers import AutoModelForCausalLM

    peft_model, tok, _ = real_adapter
    expected = serving.logits(peft_model, tok, PROMPTS)
    folder = serving.save_merged(peft_model, tok, tmp_path / "merged", info={"results": {"loss": 1.5}})
    assert hasattr(peft_model, "peft_config")                       # the adapter model is left as it was
    reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    torch.testing.assert_close(serving.logits(reloaded, tok, PROMPTS), expected, atol=1e-4, rtol=1e-4)
    card = (folder / serving.CARD_FILE).read_text()
    assert "library_name: transformers" in card and f"base_model: {HUB_ID}" in card and "| loss | 1.5 |" in card
    assert not (folder / serving.CONFIG_FILE).exists()               # a plain model, no adapter left


@pytest.mark.model
def test_an_adapter_converted_to_gguf_reads_back_with_the_same_predictions(real_adapter, tmp_path):
    import gguf

    from labkit.models import REGISTRY, packaged_gguf_path

    peft_model, tok, folder = real_adapter
    path, merged, merged_tok = gguf_export.adapter_to_gguf(folder, tmp_path / "gguf" / "adapter.gguf", dtype="f16")
    torch.testing.assert_close(serving.logits(merged, merged_tok, PROMPTS), serving.logits(peft_model, tok, PROMPTS),
                               atol=1e-4, rtol=1e-4)          # merged from disk == the adapter model
    check = gguf_export.check_gguf(path, merged, merged_tok, PROMPTS, max_new_tokens=6)
    assert check["same_token_ids"] and check["same_next_token"] and check["same_greedy_replies"], check
    assert check["max_abs_logit_diff"] < 0.1, check               # F16 rounding only
    assert 200 < check["file_mib"] < 300                          # 135M parameters at 2 bytes

    # The tokenizer metadata is what llama.cpp's own converter wrote for this tokenizer.
    ours, theirs = gguf.GGUFReader(path), gguf.GGUFReader(packaged_gguf_path(REGISTRY["smollm2-135m-instruct"]))
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type",
                "tokenizer.ggml.pre", "tokenizer.ggml.eos_token_id", "llama.rope.freq_base"):
        assert ours.fields[key].contents() == theirs.fields[key].contents(), key
    assert {t.name for t in ours.tensors} == {t.name for t in theirs.tensors}

    modelfile = gguf_export.write_modelfile(path, merged_tok).read_text()
    assert modelfile.startswith("FROM ./adapter.gguf\n") and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "<|im_start|>{{ .Role }}" in modelfile


def test_gguf_export_refuses_what_it_cannot_write_before_any_work(tmp_path):
    model, tok = toy_model()
    with pytest.raises(ValueError, match="dtype='q4_0'"):
        gguf_export.write_gguf(model, tok, tmp_path / "m.gguf", dtype="q4_0")
    with pytest.raises(ValueError, match="give the file a .gguf name"):
        gguf_export.write_gguf(model, tok, tmp_path / "m.bin")
    with pytest.raises(ValueError, match="still has adapters: merge them first"):
        gguf_export.write_gguf(random_lora(toy_model()[0]), tok, tmp_path / "m.gguf")
    model.config.model_type = "qwen2"
    with pytest.raises(ValueError, match="model_type='qwen2'"):
        gguf_export.write_gguf(model, tok, tmp_path / "m.gguf")
    with pytest.raises(FileNotFoundError, match="no such GGUF file"):
        gguf_export.write_modelfile(tmp_path / "missing.gguf", tok)
    with pytest.raises(ValueError, match="adapter_config.json: missing; is .*nope an adapter folder"):
        gguf_export.adapter_to_gguf(tmp_path / "nope", tmp_path / "m.gguf")
    assert list(tmp_path.iterdir()) == []


def test_the_toy_model_round_trips_through_gguf_in_f32(tmp_path):
    model, tok = toy_model()
    path = gguf_export.write_gguf(model, tok, tmp_path / "toy.gguf", dtype="f32")
    check = gguf_export.check_gguf(path, model, tok, PROMPTS, max_new_tokens=4)
    assert check["same_token_ids"] and check["same_greedy_replies"]
    assert check["max_abs_logit_diff"] < 1e-4, check              # F32: exact up to summation order
    assert [p.name for p in tmp_path.iterdir()] == ["toy.gguf"]   # no temporary file left


# --- which servers take which adapter ---------------------------------------------------------

def saved(tmp_path, name, info=None, **kw):
    return serving.save_adapter(random_lora(toy_model()[0], **kw), tmp_path / name, info=info)


def test_dora_is_named_and_refused_by_the_vllm_command(tmp_path):
    lora, dora = saved(tmp_path, "lora"), saved(tmp_path, "dora", use_dora=True)
    qlora = saved(tmp_path, "qlora", info={"train": {"method": "qlora"}})
    assert [serving.adapter_kind(f) for f in (lora, dora, qlora)] == ["LoRA", "DoRA", "QLoRA"]
    assert serving.servers_for(dora)["vLLM"].startswith("no")
    assert serving.servers_for(lora)["vLLM"].startswith("yes")
    assert "--lora-modules lora=" in serving.vllm_command("base", {"lora": lora, "qlora": qlora})
    with pytest.raises(serving.AdapterError, match="dora: DoRA adapter.*serving.save_merged"):
        serving.vllm_command("base", {"lora": lora, "dora": dora})


# --- push_to_hub, up to the upload ------------------------------------------------------------

class FakeHfApi:
    """Records what push_to_hub asks of the hub; uploads nothing."""

    def __init__(self, token=None):
        self.token, self.calls = token, []

    def create_repo(self, **kw):
        self.calls.append(("create_repo", kw))

    def upload_folder(self, **kw):
        self.calls.append(("upload_folder", kw))
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{kw['repo_id']}/commit/abc"})()


def hub_ready(tmp_path):
    """A saved toy adapter whose config names a hub id (as a real model's would)."""
    folder = saved(tmp_path, "adapter")
    cfg = json.loads((folder / serving.CONFIG_FILE).read_text())
    (folder / serving.CONFIG_FILE).write_text(json.dumps({**cfg, "base_model_name_or_path": HUB_ID}))
    return folder


def test_push_to_hub_creates_a_private_repo_and_uploads_the_folder(tmp_path, monkeypatch):
    import huggingface_hub

    folder = hub_ready(tmp_path)
    api = FakeHfApi()
    url = serving.push_to_hub(folder, "me/medical-lora", api=api)
    assert url == "https://huggingface.co/me/medical-lora/commit/abc"
    assert api.calls == [("create_repo", {"repo_id": "me/medical-lora", "private": True, "exist_ok": True,
                                          "repo_type": "model"}),
                         ("upload_folder", {"folder_path": str(folder), "repo_id": "me/medical-lora",
                                            "repo_type": "model", "commit_message": "Upload from Fine-Tuning Lab"})]
    made = []
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: made.append(FakeHfApi(token)) or made[-1])
    serving.push_to_hub(folder, "me/medical-lora", token="hf_x", private=False)
    assert made[0].token == "hf_x" and made[0].calls[0][1]["private"] is False


def test_push_to_hub_refuses_before_any_network(tmp_path):
    folder = hub_ready(tmp_path)
    api = FakeHfApi()
    for repo_id in ("medical-lora", "me/bad name", ""):
        with pytest.raises(ValueError, match="is not a hub repository id"):
            serving.push_to_hub(folder, repo_id, api=api)
    local = saved(tmp_path, "local")            # the toy's base is no hub id: its config keeps a local path
    with pytest.raises(serving.AdapterError, match="is not a hub id; nobody who downloads"):
        serving.push_to_hub(local, "me/x", api=api)
    (folder / serving.CARD_FILE).unlink()
    with pytest.raises(serving.AdapterError, match="README.md: missing"):
        serving.push_to_hub(folder, "me/x", api=api)
    with pytest.raises(serving.AdapterError, match="no such folder"):
        serving.push_to_hub(tmp_path / "nope", "me/x", api=api)
    assert api.calls == []
