"""From notebook to cluster: write an experiment as a standalone multi-GPU training job.

    cfg = labkit.TrainConfig(method="lora", learning_rate=2e-4, steps=300)
    job = export_job(cfg, model="smollm2-135m-instruct", data="domains/medical.jsonl", gpu_gb=24)
    job.folder                     # outputs/jobs/medical-lora/
    print(job.readme)              # the exact launch commands

or, from a shell:  python -m labkit export --config cfg.json --model smollm2-135m-instruct \\
                       --data data/domains/medical.jsonl --out jobs/medical --gpu-gb 24

The folder holds ``train.py`` (TRL's SFTTrainer + PEFT's LoraConfig, no labkit import),
``job.json`` (every setting), ``accelerate/{ddp,fsdp,deepspeed_zero3}.yaml`` (one config per way
of spreading the work over GPUs, multi-node settings in comments), the data file and a README.

Bad jobs are refused here, before anything is written: an unknown method, a missing or
untrainable data file, a model that is no registry name, folder or hub id ``owner/name``, or one
that does not fit the GPU you name (per the memory estimate). The folder is written whole or
not at all, and never over anything but an earlier export (``labkit.files``).
"""
from __future__ import annotations

import json
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .files import replacing_folder
from .training import TrainConfig

TEMPLATES = Path(__file__).resolve().parent / "templates"
TARGETS = ("ddp", "fsdp", "deepspeed_zero3")
TRAINABLE_FORMATS = ("text", "messages", "prompt_completion")


@dataclass
class ExportedJob:
    folder: Path
    job: dict                 # what job.json holds
    files: list[Path]
    estimate: dict | None     # the memory estimate per GPU, when gpu_gb was given

    @property
    def readme(self) -> str:
        return (self.folder / "README.md").read_text()

    def command(self, target: str = "ddp", num_processes: int = 2) -> str:
        """The launch command for one target, run from the job folder."""
        return launch_command(target, num_processes)


def launch_command(target: str, num_processes: int = 2) -> str:
    if target not in TARGETS:
        raise ValueError(f"target={target!r}: choose one of {TARGETS}")
    return f"accelerate launch --config_file accelerate/{target}.yaml --num_processes {num_processes} train.py"


# --- checks -----------------------------------------------------------------------------------

def check_data(data) -> tuple[Path, str, int]:
    """The data file's absolute path, its format and its number of training records."""
    from .data import data_path, detect_format, read_jsonl

    path = data_path(data)
    if not path.is_file():
        raise ValueError(f"data={str(data)!r}: no such file (looked at {path})")
    records = read_jsonl(path)  # checks every line; a bad one names file:line
    if not records:
        raise ValueError(f"data={str(data)!r}: the file has no records")
    fmt = detect_format(records[0])
    if fmt not in TRAINABLE_FORMATS:
        raise ValueError(f"data={str(data)!r} is in the {fmt!r} format; a supervised fine-tuning job "
                         f"trains on one of {TRAINABLE_FORMATS}")
    n_train = sum(1 for r in records if r.get("split", "train") == "train")
    if n_train == 0:
        raise ValueError(f"data={str(data)!r}: no records with split='train'")
    return path.resolve(), fmt, n_train


def model_facts(model: str) -> dict:
    """Where the model comes from, its parameter count and the layer class FSDP wraps.

    The architecture is built on PyTorch's "meta" device (shapes only, no memory, no weights
    read), which needs only the model's config.json: a local folder, the converted packaged
    model, or a hub id in the local cache."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from .models import REGISTRY, hub_problem, resolve

    model = str(model)
    source, spec = resolve(model, check_hub=False)  # refuses a path that is no folder, a name that is no id
    local = Path(source).is_dir()
    if not local and spec is None and model.count("/") != 1:
        raise ValueError(f"model={model!r} is not a registry name ({', '.join(REGISTRY)}), an existing model "
                         "folder, or a hub id of the form owner/name")
    facts = {"name": model, "source": str(Path(source).resolve()) if local else source,
             "hub_id": spec.hub_id if spec else (None if local else source),
             "parameters": None, "layer_class": None, "arch": None}
    if not local and hub_problem(source):
        return facts  # offline and not cached: no config to read (and no download's time-outs to wait)
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError):
        return facts  # no config reachable: the caller decides
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config)
    from .lora import ArchShape

    facts["arch"] = ArchShape(model, hidden=config.hidden_size, intermediate=config.intermediate_size,
                              layers=config.num_hidden_layers, heads=config.num_attention_heads,
                              kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
                              vocab=config.vocab_size, head_dim=getattr(config, "head_dim", None),
                              tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)))
    facts.update(parameters=sum(p.numel() for p in meta.parameters()),
                 layer_class=(list(getattr(meta, "_no_split_modules", None) or []) or [None])[0])
    return facts


def memory_estimate(cfg: TrainConfig, facts: dict, gpu_gb: float) -> dict:
    """Per-GPU training memory with one full copy per GPU (as DDP keeps it), against ``gpu_gb``
    (GiB), from :mod:`labkit.calculator` with the dtypes ``train.py`` uses: full fine-tuning
    keeps fp32 weights, gradients and AdamW moments; LoRA/DoRA keep frozen 16-bit weights
    (fp32 without mixed precision) and fp32 adapters; QLoRA keeps NF4 weights."""
    from .calculator import estimate, fits

    half = cfg.mixed_precision in ("bf16", "fp16")
    weight_dtype = "fp32" if cfg.method == "full" or not half else "bf16"
    b = estimate(facts["arch"], method=cfg.method, optimizer="adamw", seq_len=cfg.max_length,
                 batch=cfg.batch_size, r=cfg.lora_r, target_modules=cfg.target_modules,
                 weight_dtype=weight_dtype, adapter_bytes=4, activation_dtype="bf16" if half else "fp32")
    parts = b.gb()
    return {"total_gb": b.total_gb, "gpu_gb": gpu_gb, "fits": fits(b, gpu_gb), "parts_gb": parts,
            "parts_text": ", ".join(f"{k} {v:.1f}" for k, v in parts.items()) + " GiB",
            "breakdown": b}


def check_fits(cfg: TrainConfig, facts: dict, gpu_gb: float) -> dict:
    if facts.get("arch") is None:
        raise ValueError(f"model={facts['name']!r}: cannot read its config here (offline?), so its memory "
                         "cannot be checked against gpu_gb; export without gpu_gb, or with the model cached")
    est = memory_estimate(cfg, facts, gpu_gb)
    if not est["fits"]:
        raise ValueError(
            f"model={facts['name']!r} with method={cfg.method!r} needs about {est['total_gb']:.1f} GiB per GPU "
            f"({est['parts_text']}), more than gpu_gb={gpu_gb:g}. Try method='qlora' or 'lora', a smaller "
            "batch_size or max_length, or a bigger GPU.")
    return est


# --- the files --------------------------------------------------------------------------------

def job_config(cfg: TrainConfig) -> TrainConfig:
    """The experiment as the job runs it: unset sizes from the ``gpu`` profile (the job runs on
    GPUs, whatever profile this notebook uses), mixed precision bf16 unless set (train.py falls
    back to fp16 on GPUs without native bf16, such as a T4)."""
    from .profiles import profile

    if cfg.mixed_precision is None:
        cfg = TrainConfig.from_dict({**cfg.to_dict(), "mixed_precision": "bf16"})
    return cfg.resolved(profile("gpu")).validate()


def job_settings(cfg: TrainConfig, facts: dict, data_rel: str) -> dict:
    """Everything train.py reads (``cfg`` from :func:`job_config`)."""
    values = cfg.to_dict()
    for unused in ("eval_every", "early_stopping_patience"):  # the job trains without a validation split
        values.pop(unused)
    values["max_steps"] = values.pop("steps")  # SFTConfig's name
    return {"model": facts["source"], "hub_id": facts["hub_id"], "model_name": facts["name"],
            "data": data_rel, "output_dir": "outputs/adapter" if cfg.method != "full" else "outputs/model",
            "gradient_accumulation_steps": 1, "gradient_checkpointing": False, **values}


_NODE_COMMENT = """\
# One machine: leave num_machines at 1. Several machines (multi-node): run the SAME command on
# every machine with these changed (or pass them as flags to `accelerate launch`):
#   num_machines: 2                 # how many machines
#   machine_rank: 0                 # 0 on the main machine, 1, 2, ... on the others
#   main_process_ip: 10.0.0.1       # the main machine's address, reachable from all of them
#   main_process_port: 29500        # a free port on the main machine
#   num_processes: 16               # processes in TOTAL (GPUs per machine x machines)
# Under SLURM, use --machine_rank $SLURM_NODEID and --main_process_ip of the first node.
"""


def accelerate_yaml(target: str, job: dict, layer_class: str | None) -> str:
    """One accelerate config file (YAML, commented) for ``target`` in ``TARGETS``."""
    mixed_precision = job["mixed_precision"] if job["mixed_precision"] in ("bf16", "fp16") else "no"
    clipping = job["max_grad_norm"] or 0.0
    note = "   # train.py uses fp16 on GPUs without native bf16 (a T4, a V100)" if mixed_precision == "bf16" else ""
    common = (f"compute_environment: LOCAL_MACHINE\n"
              f"mixed_precision: {mixed_precision}{note}\n"
              "num_processes: 2                  # processes on ALL machines together (1 per GPU)\n"
              "num_machines: 1\nmachine_rank: 0\nmain_process_ip: null\nmain_process_port: null\n"
              "rdzv_backend: static\nsame_network: true\ngpu_ids: all\nuse_cpu: false\n"
              "downcast_bf16: 'no'\n")
    if target == "ddp":
        head = ("# DDP (DistributedDataParallel): every GPU holds a full copy of the model and sees a\n"
                "# different slice of each batch; gradients are averaged after every step.\n"
                "# Simplest and fastest when the model (plus gradients and optimizer state) fits one GPU.\n")
        return head + _NODE_COMMENT + "distributed_type: MULTI_GPU\n" + common
    if target == "fsdp":
        wrap = (f"  fsdp_transformer_layer_cls_to_wrap: {layer_class}   # one shard unit per decoder layer\n"
                if layer_class else "  # fsdp_transformer_layer_cls_to_wrap: (default: the model's decoder layer class)\n")
        head = ("# FSDP (Fully Sharded Data Parallel, version 2): the weights, gradients and optimizer state\n"
                "# are split across the GPUs; each layer is gathered just before it runs. Use it when one\n"
                "# GPU cannot hold the whole training state.\n")
        return head + _NODE_COMMENT + "distributed_type: FSDP\n" + common + (
            "fsdp_config:\n"
            "  fsdp_version: 2\n"
            "  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP\n" + wrap +
            "  fsdp_reshard_after_forward: true      # free gathered weights after use (ZeRO-3 style)\n"
            "  fsdp_state_dict_type: FULL_STATE_DICT  # save one ordinary safetensors file at the end\n"
            "  fsdp_cpu_ram_efficient_loading: true  # only rank 0 reads the weights from disk ...\n"
            "  fsdp_sync_module_states: true         # ... and sends them to the other ranks\n"
            "  fsdp_offload_params: false            # true: park parameters in CPU RAM (slower, less GPU memory)\n"
            "  fsdp_activation_checkpointing: false  # true: recompute activations in backward (less memory)\n")
    if target == "deepspeed_zero3":
        head = ("# DeepSpeed ZeRO stage 3: like FSDP, the weights, gradients and optimizer state are split\n"
                "# across GPUs. Needs `pip install deepspeed` on the cluster. Offloading to CPU RAM (or\n"
                "# NVMe) trades speed for memory: set offload_*_device to cpu.\n")
        return head + _NODE_COMMENT + "distributed_type: DEEPSPEED\n" + common + (
            "deepspeed_config:\n"
            "  zero_stage: 3\n"
            "  zero3_init_flag: true                 # build the model already sharded (train.py creates its\n"
            "                                        # SFTConfig before the model for this; 4-bit QLoRA excepted)\n"
            "  zero3_save_16bit_model: true          # gather a 16-bit copy of the weights when saving\n"
            "  offload_optimizer_device: none        # none | cpu | nvme\n"
            "  offload_param_device: none            # none | cpu | nvme\n"
            f"  gradient_accumulation_steps: {job['gradient_accumulation_steps']}        # must equal job.json's\n"
            f"  gradient_clipping: {clipping}                # must equal job.json's max_grad_norm\n"
            "  deepspeed_multinode_launcher: standard  # multi-node: pdsh | standard | openmpi | mvapich\n")
    raise ValueError(f"target={target!r}: choose one of {TARGETS}")


def readme_text(job: dict, fmt: str, n_train: int, estimate: dict | None, gpu_gb) -> str:
    per_step = job["batch_size"] * job["gradient_accumulation_steps"]
    precision = job["mixed_precision"]
    if precision == "bf16":
        precision += " (train.py uses fp16 on GPUs without native bf16, such as a T4)"
    fit = ""
    if estimate:
        fit = (f"\nMemory estimate per GPU (one full copy, as DDP keeps it): about {estimate['total_gb']:.1f} GiB "
               f"of the {gpu_gb:g} GiB you named ({estimate['parts_text']}). FSDP and ZeRO-3 divide the "
               "weights, gradients and optimizer state by the number of GPUs; activations stay per GPU.\n")
    return f"""# Fine-tuning job: {job['model_name']}, {job['method']}

Exported from Fine-Tuning Lab. `train.py` needs no labkit: only `torch transformers datasets
peft trl accelerate` (and `bitsandbytes` for QLoRA, `deepspeed` for the ZeRO-3 config).
All settings are in `job.json`; `python train.py --help` lists the flags that override them.

| | |
|---|---|
| model | `{job['model']}` (hub id: `{job['hub_id']}`) |
| data | `{job['data']}` ({fmt} format, {n_train} training records) |
| method | {job['method']} (LoRA r={job['lora_r']}, alpha={job['lora_alpha']}, target {job['target_modules']}) |
| steps | {job['max_steps']}, learning rate {job['learning_rate']:g}, schedule {job['schedule']}, warmup {job['warmup_steps']} |
| batch | {job['batch_size']} sequences per GPU x {job['gradient_accumulation_steps']} accumulation = {per_step} per GPU per step |
| length | at most {job['max_length']} tokens per sequence |
| precision | {precision} |
| seed | {job['seed']} |
{fit}
Sequences per optimizer step = batch_size x gradient_accumulation_steps x number of GPUs:
with 2 GPUs {per_step} x 2 = {per_step * 2}; with 8 GPUs {per_step * 8}. More GPUs means a bigger
batch per step, not more steps: lower `--max-steps` (or the batch size) to keep the same number
of training examples.

The model path is the folder the lab converted on the machine that exported this job. On
another machine `train.py` falls back to the hub id (needs a network or a filled HF cache), or
pass `--model /path/to/weights`.

## Run it (from this folder)

One GPU (or a CPU, slowly):

    python train.py

Several GPUs on one machine, each with a full copy of the model (DDP):

    {launch_command('ddp', 2)}

Sharded across GPUs, when the model does not fit one GPU (FSDP, or DeepSpeed ZeRO-3):

    {launch_command('fsdp', 2)}
    {launch_command('deepspeed_zero3', 2)}

Change `--num_processes` to the number of GPUs. Several machines: see the comments at the top
of each `accelerate/*.yaml`; on every machine, for example for 2 machines with 8 GPUs each:

    accelerate launch --config_file accelerate/ddp.yaml --num_machines 2 --num_processes 16 \\
        --machine_rank <0 or 1> --main_process_ip <address of machine 0> --main_process_port 29500 train.py

No GPU, two processes on the CPU (how the lab tests this job; a few tiny steps):

    accelerate launch --multi_gpu --num_processes 2 train.py --max-steps 2 --batch-size 1 --max-length 32 --mixed-precision no

(`--cpu --num_processes 2` would start only one process.)

Sharded runs and QLoRA: `train.py` creates its training configuration before it loads the model,
because under ZeRO-3 that is what registers the DeepSpeed config with transformers, so that each
GPU builds only its share of the model (`zero3_init_flag`). Under FSDP and ZeRO-3 it gives a 4-bit
model no `device_map` (the sharding places the weights) and stores the 4-bit weights in the compute
dtype (`bnb_4bit_quant_storage`), as FSDP and ZeRO-3 can only shard one floating-point dtype.
transformers does not build a 4-bit model sharded: under ZeRO-3 each GPU loads the 4-bit model
whole (a quarter of its 16-bit size), then training shards it.

## What comes out

`{job['output_dir']}/`: {'`adapter_model.safetensors` + `adapter_config.json` (load with `peft.PeftModel.from_pretrained(base_model, folder)`)' if job['method'] != 'full' else '`model.safetensors` + `config.json` (load with `AutoModelForCausalLM.from_pretrained(folder)`)'},
the tokenizer, and `run_report.json` (world size, losses per step, wall time, the job).
"""


def default_job_dir(data_file: Path, method: str) -> Path:
    """``outputs/jobs/<data>-<method>`` at the repository root (``labkit.files.outputs_root``)."""
    from .files import outputs_root

    return outputs_root() / "jobs" / f"{Path(data_file).stem}-{method}"


def export_job(config: TrainConfig | dict | None = None, model: str = "smollm2-135m-instruct",
               data="domains/medical.jsonl", out_dir=None, gpu_gb: float | None = None,
               copy_data: bool = True, overwrite: bool = False) -> ExportedJob:
    """Write ``out_dir`` with train.py, job.json, accelerate configs, the data and a README.

    config:    a :class:`TrainConfig` (or its dict); unset sizes come from the ``gpu`` profile.
    model:     a registry name, hub id or folder (the packaged default is written as its
               converted safetensors folder, with its hub id as the fallback elsewhere).
    data:      a JSON-lines file (a name in ``data/`` or a path): text, messages or prompt/completion.
    out_dir:   the job folder; default ``outputs/jobs/<data>-<method>``.
    gpu_gb:    memory of one target GPU; refuse the job if the estimate does not fit.
    copy_data: copy the file into the job (else job.json keeps its absolute path).
    """
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    cfg = job_config((config or TrainConfig()).validate())
    data_file, fmt, n_train = check_data(data)
    if cfg.packing and fmt != "text":
        raise ValueError(f"packing=True is for plain-text data; {data_file} holds {fmt!r} records")
    folder = Path(out_dir) if out_dir is not None else default_job_dir(data_file, cfg.method)
    check_replaceable(folder, overwrite)
    facts = model_facts(model)
    estimate = check_fits(cfg, facts, gpu_gb) if gpu_gb is not None else None

    data_rel = f"data/{data_file.name}" if copy_data else str(data_file)
    job = job_settings(cfg, facts, data_rel)
    texts = {"job.json": json.dumps(job, indent=2) + "\n",
             "README.md": readme_text(job, fmt, n_train, estimate, gpu_gb),
             **{f"accelerate/{t}.yaml": accelerate_yaml(t, job, facts["layer_class"]) for t in TARGETS}}

    # Built beside `folder` and renamed in whole (labkit.files): an export killed or out of disk
    # leaves the earlier folder as it was, or none, never half a job.
    with replacing_folder(folder) as new:
        (new / "accelerate").mkdir()
        shutil.copy2(TEMPLATES / "train.py", new / "train.py")
        for name, text in texts.items():
            (new / name).write_text(text)
        if copy_data:
            (new / "data").mkdir()
            shutil.copy2(data_file, new / data_rel)
    written = ["train.py", *texts] + ([data_rel] if copy_data else [])
    return ExportedJob(folder=folder, job=job, files=[folder / name for name in written], estimate=estimate)


def check_replaceable(folder: Path, overwrite: bool) -> None:
    """Refuse ``folder`` unless it is free, empty, or (with ``overwrite``) holds nothing but an
    earlier export's files: replacing it must not delete anything a learner made."""
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        return
    if not folder.is_dir():
        raise ValueError(f"out_dir={str(folder)!r} is a file; choose a folder")
    if not overwrite:
        raise ValueError(f"out_dir={str(folder)!r} exists and is not empty; pass overwrite=True "
                         "(--overwrite) or choose another folder")
    try:
        data = json.loads((folder / "job.json").read_text())["data"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"out_dir={str(folder)!r} is not a job folder exported by labkit (no readable job.json); "
                         "nothing was written or deleted. Choose another folder") from None
    ours = {"train.py", "job.json", "README.md", "accelerate/", "data/", str(data),
            *(f"accelerate/{t}.yaml" for t in TARGETS)}
    inside = {p.relative_to(folder).as_posix() + ("/" if p.is_dir() else "") for p in folder.rglob("*")}
    others = sorted(inside - ours)
    if others:
        shown = ", ".join(others[:5]) + (f", ... ({len(others)} in all)" if len(others) > 5 else "")
        raise ValueError(f"out_dir={str(folder)!r} also holds {shown}, which overwriting would delete; "
                         "nothing was written. Move those elsewhere, or choose another folder")


def main(args) -> int:
    """``python -m labkit export``: see ``python -m labkit export --help``."""
    cfg = TrainConfig.load(args.config) if args.config else TrainConfig()
    try:
        job = export_job(cfg, model=args.model, data=args.data, out_dir=args.out, gpu_gb=args.gpu_gb,
                         copy_data=not args.no_copy_data, overwrite=args.overwrite)
    except ValueError as e:
        print(f"export refused: {e}", file=sys.stderr)
        return 2
    print(f"wrote {job.folder}/ ({', '.join(str(f.relative_to(job.folder)) for f in job.files)})")
    if job.estimate:
        print(f"memory per GPU: about {job.estimate['total_gb']:.1f} GiB of {args.gpu_gb:g} GiB")
    print(f"run it:  cd {shlex.quote(str(job.folder))} && {job.command('ddp', 2)}")
    return 0
