"""Export an experiment as a standalone accelerate job: files, configs, refusals, and a real
two-process run of the exported script."""
import ast
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from browser_helpers import free_port

from labkit.export import TARGETS, export_job, launch_command
from labkit.training import TrainConfig

MEDICAL = "domains/medical.jsonl"


@pytest.fixture(scope="module")
def toy_folder(tmp_path_factory):
    """The toy model saved as a model folder (the exporter reads only its config)."""
    from labkit.toy import toy_model

    model, tok = toy_model()
    folder = tmp_path_factory.mktemp("toy-model")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def exported(toy_folder, tmp_path_factory):
    cfg = TrainConfig(method="dora", learning_rate=1e-4, steps=50, batch_size=4, max_length=128,
                      schedule="cosine", warmup_steps=5, lora_r=4, seed=7)
    return export_job(cfg, model=toy_folder, data=MEDICAL, out_dir=tmp_path_factory.mktemp("job") / "medical")


def test_export_writes_a_standalone_job(exported):
    folder = exported.folder
    for name in ("train.py", "job.json", "README.md", "data/medical.jsonl",
                 *(f"accelerate/{t}.yaml" for t in TARGETS)):
        assert (folder / name).is_file(), name
    job = json.loads((folder / "job.json").read_text())
    assert (job["method"], job["learning_rate"], job["max_steps"], job["batch_size"], job["max_length"],
            job["schedule"], job["warmup_steps"], job["lora_r"], job["seed"]) == \
        ("dora", 1e-4, 50, 4, 128, "cosine", 5, 4, 7)
    assert job["data"] == "data/medical.jsonl" and job["mixed_precision"] == "bf16"
    source = (folder / "train.py").read_text()
    imported = {(n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
                for n in ast.walk(ast.parse(source)) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in n.names}
    assert imported <= {"argparse", "json", "os", "time", "pathlib", "torch", "accelerate", "datasets",
                        "peft", "transformers", "trl"}, imported
    assert "SFTTrainer" in source and "LoraConfig" in source
    readme = exported.readme
    for target in TARGETS:
        assert launch_command(target, 2) in readme
    assert "--multi_gpu --num_processes 2" in readme and "machine_rank" in readme


def test_accelerate_configs_pass_accelerates_own_loading(exported, monkeypatch):
    """Each YAML loads with accelerate's config loader; FSDP and ZeRO-3 go further, through the
    launcher's argument merging into the plugins the training processes would build (DeepSpeed
    itself is not needed for that)."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser, prepare_multi_gpu_env
    from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    paths = {t: str(exported.folder / "accelerate" / f"{t}.yaml") for t in TARGETS}
    expected = {"ddp": DistributedType.MULTI_GPU, "fsdp": DistributedType.FSDP,
                "deepspeed_zero3": DistributedType.DEEPSPEED}
    known = {a.dest for a in launch_command_parser()._actions}
    for target, path in paths.items():
        config = load_config_from_file(path)
        assert config.distributed_type == expected[target] and config.mixed_precision == "bf16"
        assert config.num_machines == 1 and config.num_processes == 2
        unknown = [k for k in {**config.fsdp_config, **config.deepspeed_config} if k not in known]
        assert not unknown, f"{target}: keys accelerate launch does not know: {unknown}"

    def launcher_args(path):
        args = launch_command_parser().parse_args(["--config_file", path, "train.py"])
        args, defaults, _ = _validate_launch_command(args)
        return args, defaults

    args, _ = launcher_args(paths["fsdp"])
    for key, value in prepare_multi_gpu_env(args).items():
        if key.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(key, value)
    fsdp = FullyShardedDataParallelPlugin()
    assert fsdp.fsdp_version == 2 and fsdp.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
    assert fsdp.cpu_ram_efficient_loading and fsdp.state_dict_type.name == "FULL_STATE_DICT"

    args, defaults = launcher_args(paths["deepspeed_zero3"])
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
    _, env = prepare_deepspeed_cmd_env(args)
    for key, value in env.items():
        if key.startswith("ACCELERATE_"):
            monkeypatch.setenv(key, value)
    plugin = DeepSpeedPlugin()
    assert plugin.zero3_init_flag  # what train.py's config-before-model order serves
    ds = plugin.deepspeed_config
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert ds["gradient_clipping"] == exported.job["max_grad_norm"]
    assert ds["gradient_accumulation_steps"] == exported.job["gradient_accumulation_steps"]


def test_bad_configs_are_refused_before_anything_is_written(toy_folder, tmp_path):
    out = tmp_path / "job"
    with pytest.raises(ValueError, match="method='sft'.*choose one of"):
        export_job(TrainConfig(method="sft"), model=toy_folder, data=MEDICAL, out_dir=out)
    with pytest.raises(ValueError, match="method"):
        export_job({"method": "adapter"}, model=toy_folder, data=MEDICAL, out_dir=out)
    with pytest.raises(ValueError, match="data='domains/nursing.jsonl': no such file"):
        export_job(TrainConfig(), model=toy_folder, data="domains/nursing.jsonl", out_dir=out)
    with pytest.raises(ValueError, match="'preference' format"):
        export_job(TrainConfig(), model=toy_folder, data="preferences.jsonl", out_dir=out)
    assert not out.exists()
    export_job(TrainConfig(), model=toy_folder, data=MEDICAL, out_dir=out)
    with pytest.raises(ValueError, match="not empty"):
        export_job(TrainConfig(), model=toy_folder, data=MEDICAL, out_dir=out)


def test_a_model_that_does_not_fit_the_gpu_is_refused(tmp_path):
    """A Llama-2-7B-shaped model (only its config.json: the exporter never reads weights):
    full fine-tuning (16 bytes a parameter, about 100 GiB) is refused on a 24 GiB GPU, QLoRA
    of the same model is accepted."""
    from transformers import LlamaConfig

    folder = tmp_path / "llama-7b-shape"
    LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=32000).save_pretrained(folder)
    small = dict(batch_size=1, max_length=512)
    with pytest.raises(ValueError, match=r"method='full' needs about \d+\.\d GiB per GPU.*gpu_gb=24"):
        export_job(TrainConfig(method="full", **small), model=str(folder), data=MEDICAL,
                   out_dir=tmp_path / "full", gpu_gb=24)
    job = export_job(TrainConfig(method="qlora", **small), model=str(folder), data=MEDICAL,
                     out_dir=tmp_path / "qlora", gpu_gb=24)
    assert job.estimate["fits"] and job.estimate["total_gb"] < 24
    assert job.estimate["breakdown"].total_params > 6.5e9
    assert "Memory estimate per GPU" in job.readme


def test_command_line_export_and_refusal(toy_folder, tmp_path, capsys):
    from labkit.__main__ import main

    cfg = tmp_path / "cfg.json"
    TrainConfig(method="lora", steps=10).save(cfg)
    assert main(["export", "--config", str(cfg), "--model", toy_folder, "--data", "instructions.jsonl",
                 "--out", str(tmp_path / "job"), "--no-copy-data"]) == 0
    assert "accelerate launch --config_file accelerate/ddp.yaml" in capsys.readouterr().out
    job = json.loads((tmp_path / "job" / "job.json").read_text())
    assert os.path.isabs(job["data"]) and job["max_steps"] == 10
    assert main(["export", "--model", toy_folder, "--data", "missing.jsonl", "--out", str(tmp_path / "j2")]) == 2
    assert "export refused: data='missing.jsonl': no such file" in capsys.readouterr().err


@pytest.mark.model
def test_exported_job_runs_on_two_processes_and_its_adapter_changes_the_model(tmp_path):
    """The real default model, LoRA, 2 steps of batch 1 x 32 tokens on each of two CPU processes
    (DDP over gloo), launched exactly as the README says; then the saved adapter is loaded back
    with PEFT, as a notebook would, and must change the next-token logits."""
    import torch
    from peft import PeftModel

    from labkit import load_model

    job = export_job(TrainConfig(method="lora", learning_rate=1e-3, seed=0), data=MEDICAL,
                     out_dir=tmp_path / "medical")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), "train.py",
           "--max-steps", "2", "--batch-size", "1", "--max-length", "32", "--mixed-precision", "no"]
    run = subprocess.run(cmd, cwd=job.folder, env=env, capture_output=True, text=True, timeout=600)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    assert "[process 0 of 2]" in log and "[process 1 of 2]" in log and "backend gloo" in log

    out = job.folder / job.job["output_dir"]
    report = json.loads((out / "run_report.json").read_text())
    assert report["world_size"] == 2 and report["distributed_type"].endswith("MULTI_CPU")
    assert report["steps"] == 2 and len(report["losses"]) == 2
    assert (out / "adapter_model.safetensors").is_file()
    # the adapter names its base by hub id, so it loads on a machine without this one's cache
    recorded = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == job.job["hub_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"

    model, tok = load_model()
    tuned = PeftModel.from_pretrained(model, str(out)).eval()
    inputs = tok("The patient was discharged on", return_tensors="pt")
    with torch.no_grad():
        after = tuned(**inputs).logits[0, -1]
        with tuned.disable_adapter():
            before = tuned(**inputs).logits[0, -1]
    assert (after - before).abs().max().item() > 1e-3


def test_every_keyword_the_exported_script_passes_still_exists():
    """The API drift check (tests/test_api_drift.py) applied to the template of train.py."""
    import importlib.util
    from pathlib import Path

    from labkit.export import TEMPLATES

    spec = importlib.util.spec_from_file_location("api_drift", Path(__file__).with_name("test_api_drift.py"))
    drift = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))
    spec.loader.exec_module(drift)  # (registered first: it defines dataclasses)
    calls = drift.library_calls((TEMPLATES / "train.py").read_text(), "labkit/templates/train.py")
    assert {"SFTConfig", "SFTTrainer", "LoraConfig", "BitsAndBytesConfig"} <= {c.target for c in calls}
    found = drift.problems(calls)
    assert not found, "\n".join(found)


@pytest.mark.parametrize("gpu, requested, expected", [
    ("T4", "bf16", "fp16"), ("A100", "bf16", "bf16"), ("T4", "no", "no"), ("T4", "fp16", "fp16")])
def test_exported_script_trains_in_bf16_only_where_the_gpu_has_it(fake_gpu, gpu, requested, expected):
    """train.py's own choice, imported from the template (a T4 answers is_bf16_supported() with True);
    QLoRA's 4-bit layers compute in that precision."""
    import importlib.util

    import torch

    from labkit.export import TEMPLATES

    spec = importlib.util.spec_from_file_location("exported_train", TEMPLATES / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    fake_gpu(gpu)
    assert train.precision_for_this_gpu(requested) == expected
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}
    assert train.compute_dtype({"mixed_precision": expected}) == dtypes[expected]


# --- issue #18: the model name, a partial folder, a learner's files, quoted commands ------------

def tree(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def offline(monkeypatch):
    """No network, HF_HUB_OFFLINE unset: reading a hub model's config must not even be tried."""
    import transformers

    from labkit import models

    monkeypatch.setattr(models, "hub_reachable", lambda timeout_s=3.0: False)
    monkeypatch.setattr(models, "_cached_on_hub_cache", lambda hub_id: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    from_pretrained = transformers.AutoConfig.from_pretrained

    def local_only(source, *args, **kwargs):
        assert os.path.isdir(source), f"a download was tried: AutoConfig.from_pretrained({source!r})"
        return from_pretrained(source, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", local_only)


@pytest.mark.parametrize("model, message", [
    ("smollm2-135m-instruc", "'smollm2-135m-instruc' is not a registry name .* or a hub id of the form owner/name"),
    ("gpt-5-turbo", "'gpt-5-turbo' is not a registry name"),
    ("./my-modle", "no such folder: ./my-modle"),
    ("my model", "'my model' is not a registry name")])
def test_a_made_up_model_is_refused_before_anything_is_written(offline, tmp_path, model, message):
    out = tmp_path / "job"
    with pytest.raises(ValueError, match=message):
        export_job(TrainConfig(), model=model, data=MEDICAL, out_dir=out)
    assert not out.exists()


def test_a_hub_id_is_exported_offline_without_waiting_for_the_hub(offline, tmp_path):
    job = export_job(TrainConfig(), model="some-org/some-model", data=MEDICAL, out_dir=tmp_path / "job")
    assert job.job["model"] == job.job["hub_id"] == "some-org/some-model"


def test_an_export_cut_short_leaves_no_partial_folder(toy_folder, tmp_path, monkeypatch):
    """Out of disk while copying the data (the last file): no half-written job appears, and an
    earlier export at the same place stays whole."""
    import errno

    out = tmp_path / "job"
    copy2 = shutil.copy2

    def disk_full_on_data(src, dst, *args, **kwargs):
        if str(dst).endswith(".jsonl"):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return copy2(src, dst, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(shutil, "copy2", disk_full_on_data)
        with pytest.raises(OSError, match="No space left"):
            export_job(TrainConfig(), model=toy_folder, data=MEDICAL, out_dir=out)
    assert os.listdir(tmp_path) == []                                 # no partial job, no temporary folder

    export_job(TrainConfig(steps=7), model=toy_folder, data=MEDICAL, out_dir=out)
    before = tree(out)
    with monkeypatch.context() as m:
        m.setattr(shutil, "copy2", disk_full_on_data)
        with pytest.raises(OSError, match="No space left"):
            export_job(TrainConfig(steps=9), model=toy_folder, data=MEDICAL, out_dir=out, overwrite=True)
    assert tree(out) == before and os.listdir(tmp_path) == ["job"]


def test_overwrite_replaces_an_earlier_export_but_deletes_nothing_a_learner_made(toy_folder, tmp_path):
    out = tmp_path / "job"
    export_job(TrainConfig(steps=7), model=toy_folder, data="instructions.jsonl", out_dir=out)
    (out / "outputs" / "adapter").mkdir(parents=True)                 # what running the job made
    (out / "outputs" / "adapter" / "adapter_model.safetensors").write_bytes(b"trained")
    (out / "notes.md").write_text("ran it on 2 GPUs")
    before = tree(out)
    with pytest.raises(ValueError, match=r"also holds notes.md, outputs/, outputs/adapter/, .*nothing was written"):
        export_job(TrainConfig(), model=toy_folder, data=MEDICAL, out_dir=out, overwrite=True)
    assert tree(out) == before

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "draft.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not a job folder exported by labkit"):
        export_job(TrainConfig(), model=toy_folder, data=MEDICAL, out_dir=mine, overwrite=True)
    assert tree(mine) == {"draft.txt": b"mine"}

    (out / "notes.md").unlink()
    shutil.rmtree(out / "outputs")
    export_job(TrainConfig(steps=9), model=toy_folder, data=MEDICAL, out_dir=out, overwrite=True)
    assert json.loads((out / "job.json").read_text())["max_steps"] == 9
    assert sorted(tree(out)) == sorted(["train.py", "job.json", "README.md", "data/medical.jsonl",
                                        *(f"accelerate/{t}.yaml" for t in TARGETS)])


def test_the_printed_command_is_safe_to_paste(toy_folder, tmp_path, capsys):
    from labkit.__main__ import main

    out = tmp_path / "my jobs; rm -rf ~" / "job"
    assert main(["export", "--model", toy_folder, "--data", MEDICAL, "--out", str(out)]) == 0
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("run it:"))
    assert shlex.split(line.removeprefix("run it:"))[:3] == ["cd", str(out), "&&"]


def test_make_lab_works_with_an_absolute_venv():
    """``make lab VENV=/abs/path`` ran ``cd notebooks && ..//abs/path/bin/jupyter``."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root = Path(__file__).resolve().parent.parent
    venv = Path(sys.prefix)
    plan = subprocess.run(["make", "-n", "lab", f"VENV={venv}", "HEADLESS=1"], cwd=root, capture_output=True,
                          text=True, timeout=60).stdout
    line = next(s for s in plan.splitlines() if "jupyter lab" in s)
    jupyter = line.split("&&")[1].split()[0]
    assert line.startswith("cd notebooks &&") and os.access(root / "notebooks" / jupyter, os.X_OK), line


# --- issue #20: configuration before the model, no device_map under FSDP / ZeRO-3 ----------------

class ModelLoaded(Exception):
    """Raised by the fake from_pretrained: the test has seen what it needs, training need not start."""


@pytest.mark.parametrize("sharding, method, device_map", [
    (None, "qlora", "cpu"),            # DDP: each process places its own 4-bit copy
    ("fsdp", "qlora", None),           # FSDP / ZeRO-3: the sharding places the weights
    ("deepspeed", "qlora", None),
    ("deepspeed", "lora", None)])
def test_exported_script_creates_its_config_before_the_model(exported, monkeypatch, sharding, method, device_map):
    """train.py's own main(), in this process: SFTConfig must exist before from_pretrained runs
    (under ZeRO-3 creating it is what registers the DeepSpeed config, so that the model is built
    sharded), and a 4-bit model gets a device_map only when nothing shards it."""
    import importlib.util

    from labkit.export import TEMPLATES

    spec = importlib.util.spec_from_file_location("exported_train_order", TEMPLATES / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    events = []

    def config(**kwargs):
        events.append("config")
        return kwargs

    def from_pretrained(source, **kwargs):
        events.append("model")
        assert kwargs.get("device_map") == device_map, kwargs
        if method == "qlora":
            assert kwargs["quantization_config"].bnb_4bit_quant_storage == kwargs["dtype"]
        raise ModelLoaded

    monkeypatch.setattr(train, "SFTConfig", config)
    monkeypatch.setattr(train.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    for var in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.delenv(var, raising=False)
    if sharding:
        monkeypatch.setenv(f"ACCELERATE_USE_{sharding.upper()}", "true")
    job = json.loads((exported.folder / "job.json").read_text())
    job.update(method=method, mixed_precision="no")
    config_file = exported.folder.parent / f"job-{sharding}-{method}.json"
    config_file.write_text(json.dumps(job))
    monkeypatch.setattr(sys, "argv", ["train.py", "--config", str(config_file)])
    with pytest.raises(ModelLoaded):
        train.main()
    assert events == ["config", "model"]
