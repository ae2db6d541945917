"""labkit: the helpers behind Fine-Tuning Lab's notebooks.

Organised by what a learner does:

- ``models``       load a model and tokenizer (offline default: SmolLM2-135M-Instruct)
- ``profiles``     how much work a notebook does on this hardware (smoke, cpu, gpu)
- ``data``         JSONL datasets in TRL's formats, validated line by line; your own CSV, Parquet or hub tables
- ``predictions``  look at what the model predicts (next token, continuations, perplexity)
- ``probes``       fixed knowledge and word-sense probes, scored before and after tuning
- ``weights``      where the weights sit, how much they moved, and the spectrum of the change
- ``widgets``      the prompt explorer and the fine-tune-and-compare widget
- ``experiment``   every knob of an experiment in one JSON object, the seed included
- ``training``     fine-tune (full, LoRA, DoRA, QLoRA) with a live loss curve and a history
- ``learning_rate``  step sizes: a toy surface, learning-rate sweeps, schedules, update sizes
- ``forgetting``   catastrophic forgetting: before/after probes, replay, the trade-off frontier
- ``scoring``      instruction following: format checks, similarity to the reference, the loss mask
- ``domains``      domain corpora, perplexity per field, word senses before and after
- ``preferences``  human judgements: a ranking widget and a safe, append-only preferences JSONL
- ``rlhf``         generate, reward model, GRPO and DPO (TRL), compared on held-out prompts
- ``rlhf_views``   what notebook 06 shows of RLHF: reward widget, live GRPO curves, figures, verdict
- ``memory``       measure peak memory
- ``toy``          a two-layer toy model for instant experiments and tests
- ``lora``         LoRA and DoRA from scratch; trainable-parameter counts from published shapes
- ``quantization`` NF4 made visible with bitsandbytes' own functions; model footprints
- ``calculator``   will a fine-tune fit on a GPU? weights, gradients, optimizer state, activations
- ``compare``      full fine-tuning, LoRA, QLoRA and DoRA measured on one task
- ``cleaning``     data preparation: duplicates, lengths, formats, the chat template, noise
- ``process``      choosing an approach, validation and early stopping, hyperparameter grids
- ``serving``      adapters on disk, hot-swapping, mixed-adapter batches, merging
- ``model_card``   what a saved adapter says: its base's hub id, the dequantised base, a model card
- ``gguf_export``  a merged model as GGUF for llama.cpp and Ollama (with a Modelfile), checked by reading it back
- ``export``       an experiment as a standalone multi-GPU accelerate job
- ``evaluation``   standard evaluation: lm-evaluation-harness on a tuned model; the lab's own checks named
- ``exercises``    each notebook's checkable exercises: check(), hint(), solution()
- ``plots``        the lab's colours and standard figures
- ``reproducibility``  one seed for everything (for the session, or for one call)
- ``claims``       the claims ledger: each lesson's claims, the numbers measured, the verdicts
- ``guards``       stop a diverging run and restore its weights; hold Ctrl-C back where needed
- ``patches``      every place labkit changes another library's internals, and why
- ``threads``      share the CPU with other lab kernels: torch's thread count, learners per server
- ``doctor``       check the environment
- ``kit``          the offline classroom kit: build a folder of wheels and the model, install with no network

Importing labkit changes no environment variable, warning filter or log level.
"""
from .experiment import Experiment
from .data import data_path, load_jsonl, read_jsonl, train_val_split
from .models import OFFLINE_MODEL, REGISTRY, load_model, load_tokenizer
from .predictions import (continuation_prob, generate, next_token_distribution,
                          perplexity)
from .profiles import profile
from .reproducibility import set_seed
from .training import TrainConfig, train

__version__ = "0.1.0"
__all__ = ["Experiment", "OFFLINE_MODEL", "REGISTRY", "TrainConfig", "continuation_prob", "data_path", "generate",
           "load_jsonl", "load_model", "load_tokenizer", "next_token_distribution", "perplexity",
           "profile", "read_jsonl", "set_seed", "train", "train_val_split"]
