"""labkit leaves the session as it found it: importing it changes no environment variable, warning
filter or log level; train() and the RLHF stages seed and pick deterministic kernels for their own
call only; generate() samples with a generator of its own and touches torch's global one never."""
import json
import logging
import os
import random
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from labkit.toy import TOY_TEXT, toy_model

ROOT = Path(__file__).resolve().parent.parent

IMPORT_LABKIT = """
import importlib, json, logging, os, sys, warnings

def snapshot():
    levels = {name: logger.level for name, logger in logging.root.manager.loggerDict.items()
              if isinstance(logger, logging.Logger)}
    return dict(os.environ), [repr(f) for f in warnings.filters], {**levels, "<root>": logging.root.level}

for name in json.loads(sys.stdin.read()):   # what labkit imports, imported first: their changes are theirs
    try:
        importlib.import_module(name)
    except Exception:
        pass
env, filters, levels = snapshot()
import labkit
env2, filters2, levels2 = snapshot()
changed = {"environ": {k: env2.get(k) for k in set(env) | set(env2) if env.get(k) != env2.get(k)},
           "filters": [f for f in filters2 if f not in filters],
           "levels": {k: v for k, v in levels2.items() if levels.get(k, logging.NOTSET) != v}}
print(json.dumps({key: value for key, value in changed.items() if value}))
"""


def run_python(code: str, stdin: str = "") -> str:
    env = {k: v for k, v in os.environ.items() if k != "TOKENIZERS_PARALLELISM"}   # conftest sets it
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, input=stdin, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_import_labkit_changes_no_environment_variable_warning_filter_or_log_level():
    """In a fresh process, compare the environment, the warning filters and every logger's level
    before and after ``import labkit``, with everything labkit imports already imported."""
    modules = run_python("import json, sys; import labkit; "
                         "print(json.dumps([m for m in sys.modules if m.split('.')[0] != 'labkit']))")
    changed = json.loads(run_python(IMPORT_LABKIT, modules))
    assert not changed, f"import labkit changed {changed}"


def global_state() -> dict:
    import datasets

    return {"torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
            "numpy_rng": np.random.get_state()[1].copy(),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "fill": torch.utils.deterministic.fill_uninitialized_memory,
            "cudnn": (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark),
            "filters": list(warnings.filters), "datasets_bars": datasets.is_progress_bar_enabled(),
            "log_levels": {name: logger.level for name, logger in logging.root.manager.loggerDict.items()
                           if isinstance(logger, logging.Logger)}}


def assert_unchanged(before: dict, after: dict):
    # loggers of modules imported meanwhile are theirs
    after["log_levels"] = {name: after["log_levels"][name] for name in before["log_levels"]}
    changed = [key for key in before if not (
        torch.equal(before[key], after[key]) if isinstance(before[key], torch.Tensor)
        else np.array_equal(before[key], after[key]) if isinstance(before[key], np.ndarray)
        else before[key] == after[key])]
    assert not changed, f"changed: {changed}"


@pytest.fixture
def unusual_session():
    """A session whose settings differ from what training picks, so a change cannot go unseen."""
    torch.manual_seed(1234)
    np.random.seed(1234)
    random.seed(1234)
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.utils.deterministic.fill_uninitialized_memory, torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(False)
    torch.utils.deterministic.fill_uninitialized_memory = True
    torch.backends.cudnn.benchmark = True
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.utils.deterministic.fill_uninitialized_memory, torch.backends.cudnn.benchmark = saved[2:]


def test_train_restores_deterministic_flags_and_random_generators(unusual_session):
    from labkit.training import train

    model, tok = toy_model()
    before = global_state()
    result = train(model, tok, [{"text": t} for t in TOY_TEXT], method="lora", steps=2, batch_size=4,
                   lora_dropout=0.1, live=False)
    assert result.history.stopped == "finished"
    assert_unchanged(before, global_state())


def test_rlhf_stage_restores_deterministic_flags_and_random_generators(unusual_session):
    from labkit import rlhf
    from test_rlhf import PAIRS, tiny_cfg

    model, tok = toy_model()
    before = global_state()
    result = rlhf.train_dpo(model, tok, PAIRS, tiny_cfg(dpo_steps=1), live=False)
    assert result.stopped == "finished"
    assert_unchanged(before, global_state())


def test_generate_leaves_torchs_global_generator_alone_and_sampling_repeats_with_its_seed(toy):
    from labkit.predictions import generate

    model, tok = toy
    torch.manual_seed(99)
    before = torch.get_rng_state()
    greedy = generate(model, tok, "The capital", max_new_tokens=6)
    assert torch.equal(torch.get_rng_state(), before), "greedy decoding should draw nothing"
    a = generate(model, tok, "The capital", max_new_tokens=12, temperature=1.0, seed=3)
    assert torch.equal(torch.get_rng_state(), before), "sampling should use its own generator"
    assert a == generate(model, tok, "The capital", max_new_tokens=12, temperature=1.0, seed=3)
    others = {generate(model, tok, "The capital", max_new_tokens=12, temperature=1.0, seed=s) for s in range(4, 8)}
    assert others - {a}, "different seeds should give different samples"
    assert greedy == generate(model, tok, "The capital", max_new_tokens=6)
    assert torch.equal(torch.get_rng_state(), before)


def test_rlhf_sampling_leaves_torchs_global_generator_alone(toy):
    from labkit import rlhf

    model, tok = toy
    before = torch.get_rng_state()
    first = rlhf.sample_responses(model, tok, ["Hi?", "Name a colour."], n=2, max_new_tokens=6, seed=5)
    assert first == rlhf.sample_responses(model, tok, ["Hi?", "Name a colour."], n=2, max_new_tokens=6, seed=5)
    rlhf.answers(model, tok, ["Hi?"], max_new_tokens=4)
    assert torch.equal(torch.get_rng_state(), before)
