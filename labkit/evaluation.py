"""Standard evaluation: a published benchmark run by a standard harness, beside the lab's own checks.

The lab's own checks (:data:`OWN_CHECKS`) are small and made for its lessons. A practitioner
also reports standard numbers that others can compare: EleutherAI's lm-evaluation-harness
(``pip install "lm-eval[hf]"``) runs hundreds of published tasks on a model in memory:

    table = run_harness(model, tok, tasks=["arc_easy"], limit=100)

The harness is optional: the lab neither installs nor needs it (its tasks download their data
sets from the Hugging Face hub, so it needs a network). :func:`harness_available` says whether
it is here; :func:`run_harness` without it raises an error that says what to install. Hugging
Face's lighteval does the same job with its own task list.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect

HARNESS = "lm_eval"
INSTALL = 'pip install "lm-eval[hf]"'

# What the lab measures itself, and the standard evaluation each resembles.
OWN_CHECKS = [
    {"check": "scoring.format_checks", "what": "verifiable format instructions (bullet counts, one word, JSON keys, "
     "word limits, lowercase, ...) checked on the reply alone", "standard it resembles":
     "IFEval (instruction following; lm-eval task 'ifeval'), at toy size, on data/instructions.jsonl"},
    {"check": "scoring.score_replies (similarity)", "what": "cosine similarity of the reply to a reference answer "
     "(sentence embeddings)", "standard it resembles": "reference-based scores such as BERTScore; not a benchmark"},
    {"check": "probes (cloze items)", "what": "greedy completion of fixed facts ('The capital of France is')",
     "standard it resembles": "knowledge benchmarks such as LAMBADA or TriviaQA, at toy size"},
    {"check": "probes.reply_loss, predictions.perplexity", "what": "loss on held-out replies, perplexity on "
     "text", "standard it resembles": "held-out perplexity (lm-eval task 'wikitext' on general text)"},
]


def harness_available() -> bool:
    """Whether lm-evaluation-harness can be imported here."""
    return importlib.util.find_spec(HARNESS) is not None


def run_harness(model, tokenizer, tasks=("arc_easy",), limit: int | None = 100, num_fewshot: int | None = None,
                batch_size: int = 8, chat_template: bool = False, seed: int = 0) -> list[dict]:
    """Run lm-evaluation-harness ``tasks`` on ``model`` (a transformers model in memory, tuned or
    merged) and return one row per task and metric: task, metric, value, stderr, samples.

    limit:         examples per task (None: all; a full task can take hours on a CPU).
    num_fewshot:   examples shown in the prompt (None: the task's own default).
    chat_template: wrap each prompt in the tokenizer's chat template (for instruct models on
                   generative tasks; the published numbers of most tasks use plain prompts).
    """
    if isinstance(tasks, str):
        tasks = [tasks]
    tasks = list(tasks)
    if not tasks or not all(isinstance(t, str) and t.strip() for t in tasks):
        raise ValueError(f"tasks={tasks!r}: give task names such as ['arc_easy', 'hellaswag'] (`lm-eval ls tasks` "
                         "lists them)")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit={limit!r}: give a positive number of examples per task, or None for all")
    if not harness_available():
        raise ModuleNotFoundError(f"lm-evaluation-harness is not installed here. Install it ({INSTALL}) where you "
                                  "have a network (Colab, a GPU machine), then run this again; the lab does not "
                                  "need it otherwise")
    # Imported by name: the harness is optional, not one of labkit's dependencies.
    lm_eval = importlib.import_module(HARNESS)
    hflm = importlib.import_module(f"{HARNESS}.models.huggingface").HFLM
    lm = hflm(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    options = {"apply_chat_template": chat_template, "log_samples": False, "random_seed": seed,
               "numpy_random_seed": seed, "torch_random_seed": seed, "fewshot_random_seed": seed}
    accepted = inspect.signature(lm_eval.simple_evaluate).parameters  # older releases lack some options
    results = lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit,
                                      **{k: v for k, v in options.items() if k in accepted})
    return harness_rows(results)


def harness_rows(results: dict) -> list[dict]:
    """lm-eval's result dict as rows: ``results["results"][task]["acc,none"]`` becomes
    ``{"task", "metric": "acc", "value", "stderr", "samples"}`` (filter ``none`` left out of the name)."""
    rows = []
    for task, metrics in results["results"].items():
        samples = results.get("n-samples", {}).get(task, {}).get("effective")
        for key, value in metrics.items():
            name, _, filt = key.partition(",")
            if name == "alias" or name.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            stderr = metrics.get(f"{name}_stderr,{filt}" if filt else f"{name}_stderr")
            rows.append({"task": task, "metric": name if filt in ("", "none") else f"{name} ({filt})",
                         "value": float(value), "stderr": stderr if isinstance(stderr, (int, float)) else None,
                         "samples": samples})
    return rows


def what_to_run(model: str, tasks=("arc_easy",), limit: int | None = 100, adapter: str | None = None) -> str:
    """The shell commands that run the same evaluation with the harness's own command line
    (``model``: a hub id or a folder; ``adapter``: a PEFT adapter folder to apply to it)."""
    model_args = f"pretrained={model}" + (f",peft={adapter}" if adapter else "")
    limit_flag = f" --limit {limit}" if limit else ""
    return f"{INSTALL}\nlm_eval --model hf --model_args {model_args} --tasks {','.join(tasks)}{limit_flag} --batch_size 8"
