"""Serving adapters: round trip, validation errors that name the file, mixed batches, merging."""
import json

import pytest
import torch

from labkit import serving
from labkit.toy import toy_model

PROMPTS = ["The capital of France is", "def add(a, b):", "The court granted"]


def random_adapter(model, name, seed):
    """A LoRA adapter with random (non-zero) weights, so it really changes the outputs."""
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    if isinstance(model, PeftModel):
        model.add_adapter(name, cfg)
        return model
    return get_peft_model(model, cfg, adapter_name=name)


@pytest.fixture
def two_adapters(tmp_path):
    model, tok = toy_model()
    model = random_adapter(model, "medical", 1)
    model = random_adapter(model, "legal", 2)
    model.eval()
    folders = {n: serving.save_adapter(model, tmp_path / n, n) for n in ("medical", "legal")}
    return model, tok, folders


def test_save_and_reload_reproduces_outputs_exactly(two_adapters):
    model, tok, folders = two_adapters
    assert (folders["legal"] / "adapter_model.safetensors").is_file()
    fresh, _ = toy_model()
    reloaded = serving.load_adapters(fresh, folders)
    for name in folders:
        model.set_adapter(name)
        reloaded.set_adapter(name)
        assert torch.equal(serving.logits(model, tok, PROMPTS), serving.logits(reloaded, tok, PROMPTS))
    with reloaded.disable_adapter():
        base = serving.logits(reloaded, tok, PROMPTS)
    assert not torch.allclose(base, serving.logits(reloaded, tok, PROMPTS))  # the adapter matters


def test_mixed_batch_equals_per_adapter_runs(two_adapters):
    model, tok, _ = two_adapters
    names = ["medical", "legal", serving.BASE]
    mixed = serving.mixed_batch_logits(model, tok, PROMPTS, names)
    one_by_one = serving.per_adapter_logits(model, tok, PROMPTS, names)
    torch.testing.assert_close(mixed, one_by_one, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown adapter"):
        serving.mixed_batch_logits(model, tok, PROMPTS[:1], ["nope"])


def test_merge_and_unload_matches_adapter(two_adapters):
    model, tok, _ = two_adapters
    check = serving.merged_equals_adapter(model, tok, PROMPTS, "legal")
    assert check["equal_within_atol"] and check["same_next_token"]
    assert set(model.peft_config) == {"medical", "legal"}  # the original keeps its adapters


def test_validation_errors_name_the_file(two_adapters, tmp_path):
    _, _, folders = two_adapters
    base, _ = toy_model()
    folder = folders["medical"]
    serving.validate_adapter(folder, base)  # a good one passes

    (folder / "adapter_model.safetensors").write_bytes(b"\x00garbage not safetensors")
    with pytest.raises(serving.AdapterError, match="adapter_model.safetensors"):
        serving.validate_adapter(folder, base)

    cfg = folders["legal"] / "adapter_config.json"
    wider, _ = toy_model(hidden_size=64)  # same architecture, another size
    with pytest.raises(serving.AdapterError, match="shape"):
        serving.validate_adapter(folders["legal"], wider)

    config = json.loads(cfg.read_text())
    config["base_model_name_or_path"] = "some-org/another-model"
    cfg.write_text(json.dumps(config))
    base.name_or_path = "/cache/smollm2-135m-instruct"
    with pytest.raises(serving.AdapterError, match="adapter_config.json.*another-model"):
        serving.load_adapters(base, {"legal": folders["legal"]})

    cfg.write_text("{not json")
    with pytest.raises(serving.AdapterError, match="adapter_config.json"):
        serving.validate_adapter(folders["legal"], base)
    with pytest.raises(serving.AdapterError, match="no such adapter folder"):
        serving.validate_adapter(tmp_path / "missing", base)


def test_request_loop_reports_latency_per_adapter(two_adapters):
    model, tok, _ = two_adapters
    requests = serving.make_requests({"medical": PROMPTS[:1], "legal": PROMPTS[1:]}, n=6, seed=0)
    log, stats = serving.serve(model, tok, requests, max_new_tokens=2, batch_size=1)
    assert len(log) == 6 and set(stats["adapter"]) <= {"medical", "legal"}
    assert stats["requests"].sum() == 6 and (stats["median_ms"] > 0).all()
    log2, _ = serving.serve(model, tok, requests, max_new_tokens=2, batch_size=3, max_requests=5)
    assert len(log2) == 5


def test_sizes_on_disk(two_adapters, tmp_path):
    model, tok, folders = two_adapters
    full = serving.save_full(toy_model()[0], tok, tmp_path / "full")
    assert serving.dir_size_bytes(full) > serving.dir_size_bytes(folders["medical"] / "adapter_model.safetensors")
    assert "--lora-modules medical=" in serving.vllm_command("base", folders)


# --- saving never deletes what it did not make (issue #18) --------------------------------------

def listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_save_adapter_refuses_a_folder_of_other_things_and_deletes_nothing(two_adapters, tmp_path):
    """Defect 1: ``save_adapter(model, "outputs/adapters")`` deleted the sibling adapters and the
    learner's notes in that folder."""
    model, _, _ = two_adapters
    root = tmp_path / "outputs" / "adapters"
    serving.save_adapter(model, root / "medical", "medical")
    (root / "notes.txt").write_text("medical: lr 2e-4, 30 steps")
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    with pytest.raises(serving.AdapterError, match=r"adapters: exists and is not an adapter folder "
                                                   r"\(it holds medical/, notes.txt\); nothing was written") as refused:
        serving.save_adapter(model, root, "legal")
    assert f"e.g. {root / 'legal'}" in str(refused.value)  # where to save it instead
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def test_save_adapter_replaces_an_adapter_folder_but_not_a_learners_file_in_it(two_adapters, tmp_path):
    model, _, _ = two_adapters
    folder = serving.save_adapter(model, tmp_path / "medical", "medical")
    serving.save_adapter(model, folder, "legal")                      # an adapter over an adapter
    assert (folder / serving.WEIGHTS_FILE).read_bytes() == \
        serving.save_adapter(model, tmp_path / "legal", "legal").joinpath(serving.WEIGHTS_FILE).read_bytes()
    (folder / "my_notes.md").write_text("keep me")
    with pytest.raises(serving.AdapterError, match=r"medical: is an adapter folder but also holds my_notes.md"):
        serving.save_adapter(model, folder, "medical")
    assert (folder / "my_notes.md").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(serving.AdapterError, match="is a file"):
        serving.save_adapter(model, tmp_path / "file", "medical")
    assert listing(tmp_path) == ["file", "legal", "medical"]          # no temporary folders left


def test_save_full_replaces_a_checkpoint_and_refuses_anything_else(tmp_path):
    model, tok = toy_model()
    full = serving.save_full(model, tok, tmp_path / "full")
    serving.save_full(model, tok, full)                               # a checkpoint over a checkpoint
    assert (full / "config.json").is_file() and (full / "model.safetensors").is_file()
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "draft.txt").write_text("mine")
    with pytest.raises(serving.AdapterError, match=r"work: exists and is not a model checkpoint folder"):
        serving.save_full(model, tok, tmp_path / "work")
    assert listing(tmp_path / "work") == ["draft.txt"]


def test_save_adapter_writes_its_lab_info_in_the_same_step_and_a_rerun_replaces_it(two_adapters, tmp_path):
    """Notebooks 05 and 07 saved with PEFT directly and then wrote lab_info.json beside it, which
    save_adapter refused to replace on a rerun (issue #18). Now the note is part of the save."""
    import json

    model, _, _ = two_adapters
    folder = serving.save_adapter(model, tmp_path / "notes", "medical", info={"notebook": "05", "run": 1})
    assert json.loads((folder / serving.INFO_FILE).read_text()) == {"notebook": "05", "run": 1}
    serving.save_adapter(model, folder, "medical", info={"notebook": "05", "run": 2})   # a rerun
    assert json.loads((folder / serving.INFO_FILE).read_text())["run"] == 2
    assert serving.load_adapters(toy_model()[0], {"medical": folder}) is not None
