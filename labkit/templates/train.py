"""Fine-tune a causal language model with TRL's SFTTrainer and (optionally) a PEFT adapter.

Exported by Fine-Tuning Lab (``python -m labkit export``). This script does not need labkit:
only torch, transformers, datasets, peft, trl and accelerate. Every setting lives in
``job.json`` next to this file; flags on the command line override a few of them.

Run it on one GPU:            python train.py
Run it on several (see README): accelerate launch --config_file accelerate/ddp.yaml train.py

What happens, top to bottom:
  1. read the job (job.json + command-line overrides)
  2. read the data file (JSON lines: "text", "messages" or "prompt"+"completion")
  3. create the training configuration (SFTConfig) BEFORE the model: under DeepSpeed ZeRO-3 this
     registers the DeepSpeed config with transformers, so that from_pretrained builds the model
     already split across the processes (zero3_init_flag) instead of a full copy on each
  4. load the tokenizer and the model (4-bit for QLoRA)
  5. describe the adapter (LoRA / DoRA / QLoRA) with PEFT's LoraConfig, or train every weight
  6. train with TRL's SFTTrainer; accelerate decides how the work is split across processes
  7. save the adapter (or the full model) as safetensors, and a small run report
"""
import argparse
import json
import os
import time
from pathlib import Path

import torch
from accelerate import PartialState
from datasets import load_dataset
from peft import LoraConfig, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
from trl import SFTConfig, SFTTrainer

HERE = Path(__file__).resolve().parent


# --- 1. the job ---------------------------------------------------------------------------------

def read_job() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(HERE / "job.json"), help="the job file (default: job.json)")
    parser.add_argument("--model", help="a folder with safetensors weights, or a Hugging Face hub id")
    parser.add_argument("--data", help="the JSON-lines training file")
    parser.add_argument("--output-dir", help="where the adapter / model is saved")
    parser.add_argument("--max-steps", type=int, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, help="sequences per step on EACH process (GPU)")
    parser.add_argument("--max-length", type=int, help="tokens per sequence (longer ones are cut)")
    parser.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"])
    args = parser.parse_args()

    job = json.loads(Path(args.config).read_text())
    for key in ("model", "data", "output_dir", "max_steps", "batch_size", "max_length", "mixed_precision"):
        value = getattr(args, key)
        if value is not None:
            job[key] = value
    # Relative paths in job.json are relative to the job folder, not to where you run from.
    for key in ("data", "output_dir"):
        if not Path(job[key]).is_absolute():
            job[key] = str(HERE / job[key])
    # The model: a local folder if it exists here, else the hub id (needs a network or a cache).
    if not Path(job["model"]).is_dir():
        job["model"] = job.get("hub_id") or job["model"]
    job["mixed_precision"] = precision_for_this_gpu(job["mixed_precision"])
    return job


def precision_for_this_gpu(requested: str) -> str:
    """bf16 only where the GPU has it natively (compute capability 8.0+: A100, L4, H100). A T4
    or V100 merely emulates bf16, slowly, and torch.cuda.is_bf16_supported() still answers True
    there: train in fp16 instead (the Trainer adds loss scaling, a GradScaler)."""
    if requested != "bf16" or not torch.cuda.is_available():
        return requested
    return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"


# --- 2. the data --------------------------------------------------------------------------------

def read_data(path: str):
    """JSON lines -> a datasets.Dataset with the columns SFTTrainer understands.

    Chat records ({"messages": [...]}) become prompt/completion pairs, so the loss is computed on
    the assistant's reply only. Records with a "split" field: only "train" rows are used.
    """
    data = load_dataset("json", data_files=path, split="train")
    if "split" in data.column_names:
        data = data.filter(lambda r: r["split"] == "train")
    if "messages" in data.column_names:
        return data.map(lambda r: {"prompt": r["messages"][:-1], "completion": r["messages"][-1:]},
                        remove_columns=data.column_names)
    if {"prompt", "completion"} <= set(data.column_names):
        return data.select_columns(["prompt", "completion"])
    return data.select_columns(["text"])


# --- 4. the model -------------------------------------------------------------------------------

def compute_dtype(job) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(job["mixed_precision"], torch.float32)


def process_state() -> PartialState:
    """Who am I: rank, number of processes, device. accelerate launch / torchrun set the
    environment; without a GPU the processes talk over gloo (cpu=True)."""
    return PartialState(cpu=not torch.cuda.is_available())


def load_model(job):
    """Full fine-tuning keeps fp32 master weights (mixed precision computes in bf16/fp16).
    LoRA/DoRA freeze the base weights, so they are stored in the compute dtype (half the memory).
    QLoRA stores them in 4 bits (NF4) and computes in the compute dtype.

    Call it after :func:`training_args`: under ZeRO-3 that is what makes from_pretrained build the
    model sharded (transformers' "Non-Trainer DeepSpeed integration": the DeepSpeed config must be
    registered before the model is created). transformers skips that sharded construction for
    4-bit models, so QLoRA under ZeRO-3 loads the (small) 4-bit model on each process, and ZeRO-3
    shards it when training starts."""
    state = process_state()
    kwargs = {"dtype": torch.float32 if job["method"] == "full" else compute_dtype(job)}
    if job["method"] == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype(job),
            # FSDP / ZeRO-3 shard the packed 4-bit weights only if they are stored in the same
            # dtype as the rest of the model (PEFT's "FSDP + QLoRA" guide).
            bnb_4bit_quant_storage=compute_dtype(job))
        if not sharded_training():
            # DDP: a quantized model must sit on its GPU from the start; each process gets its own.
            # Under FSDP / ZeRO-3 no device_map: the sharding decides where the weights go
            # (PEFT's "FSDP + QLoRA" and "DeepSpeed ZeRO-3 + QLoRA" guides).
            kwargs["device_map"] = {"": state.local_process_index} if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(job["model"], **kwargs)
    if job["method"] == "qlora" and not sharded_training():
        # Casts layer norms to fp32 and enables input gradients (not with FSDP/ZeRO-3: those
        # need one dtype across the model).
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=job["gradient_checkpointing"])
    return model


def sharded_training() -> bool:
    """True when accelerate launched FSDP or DeepSpeed (it sets these variables)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" or \
        os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


# --- 5. the adapter -----------------------------------------------------------------------------

def adapter_config(job):
    """PEFT's LoraConfig for LoRA, DoRA (use_dora=True) and QLoRA (LoRA on a 4-bit model);
    None for full fine-tuning (every weight trains)."""
    if job["method"] == "full":
        return None
    return LoraConfig(r=job["lora_r"], lora_alpha=job["lora_alpha"], lora_dropout=job["lora_dropout"],
                      target_modules=job["target_modules"], use_dora=job["method"] == "dora",
                      bias="none", task_type="CAUSAL_LM")


# --- 3. the training configuration (created before the model); 6. training --------------------

def training_args(job) -> SFTConfig:
    """TRL's SFTConfig. Creating it reads accelerate's launch settings: with DeepSpeed it registers
    the DeepSpeed config with transformers (so create it before loading the model, see load_model)."""
    schedule = job["schedule"]
    if schedule == "constant" and job["warmup_steps"]:
        schedule = "constant_with_warmup"
    return SFTConfig(
        output_dir=job["output_dir"],
        max_steps=job["max_steps"],
        per_device_train_batch_size=job["batch_size"],   # per process: see the README's arithmetic
        gradient_accumulation_steps=job["gradient_accumulation_steps"],
        learning_rate=job["learning_rate"],
        lr_scheduler_type=schedule,
        warmup_steps=job["warmup_steps"],
        weight_decay=job["weight_decay"],
        max_grad_norm=job["max_grad_norm"] if job["max_grad_norm"] is not None else 0.0,
        max_length=job["max_length"],
        packing=job["packing"], packing_strategy="wrapped",   # plain text: rows filled end to end
        activation_checkpointing=job["gradient_checkpointing"],  # transformers 5's name for it
        bf16=job["mixed_precision"] == "bf16",
        fp16=job["mixed_precision"] == "fp16",
        use_cpu=not torch.cuda.is_available(),
        seed=job["seed"],
        data_seed=job["seed"],
        logging_steps=1,
        save_strategy="no",            # one save at the end (below); add checkpoints for long runs
        report_to=[],                  # "wandb" / "tensorboard" to log elsewhere
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
    )


def main():
    job = read_job()
    state = process_state()
    print(f"[process {state.process_index} of {state.num_processes}] device {state.device}, "
          f"backend {state.backend}", flush=True)
    if state.is_main_process:
        per_step = job["batch_size"] * job["gradient_accumulation_steps"] * state.num_processes
        print(f"model {job['model']}\ndata {job['data']}\nmethod {job['method']}, "
              f"{job['max_steps']} steps x {per_step} sequences "
              f"({job['batch_size']} per process x {job['gradient_accumulation_steps']} accumulation "
              f"x {state.num_processes} processes) x {job['max_length']} tokens at most", flush=True)

    args = training_args(job)    # first: under ZeRO-3 the model is then built already sharded
    tokenizer = AutoTokenizer.from_pretrained(job["model"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = load_model(job)
    with state.main_process_first():  # rank 0 reads and caches the data first, the others reuse it
        data = read_data(job["data"])
    trainer = SFTTrainer(model=model, args=args, train_dataset=data,
                         processing_class=tokenizer, peft_config=adapter_config(job))
    if len(trainer.train_dataset) == 0:  # TRL drops chat examples whose reply was cut off entirely
        raise SystemExit(f"no training example is left after cutting to max_length={job['max_length']} "
                         "tokens (the replies were cut off): raise --max-length")
    start = time.perf_counter()
    trainer.train()
    wall_s = time.perf_counter() - start

    # --- 7. save ---------------------------------------------------------------------------------
    if trainer.is_fsdp_enabled:  # gather the shards into one full set of weights before saving
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(job["output_dir"])  # adapter_model.safetensors (PEFT) or model.safetensors
    if state.is_main_process:
        tokenizer.save_pretrained(job["output_dir"])
        saved_config = Path(job["output_dir"], "adapter_config.json")
        if saved_config.exists() and job.get("hub_id"):   # the base by its hub id, not this machine's path
            values = json.loads(saved_config.read_text())
            values["base_model_name_or_path"] = job["hub_id"]
            saved_config.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
        report = {"world_size": state.num_processes, "distributed_type": str(state.distributed_type),
                  "steps": trainer.state.global_step, "wall_s": round(wall_s, 2),
                  "losses": [row["loss"] for row in trainer.state.log_history if "loss" in row],
                  "job": job}
        Path(job["output_dir"], "run_report.json").write_text(json.dumps(report, indent=2))
        print(f"saved to {job['output_dir']} after {trainer.state.global_step} steps in {wall_s:.1f} s",
              flush=True)
    state.wait_for_everyone()


if __name__ == "__main__":
    main()
