"""The benchmark scripts are not run by the suite (minutes each), but what they are built from is:
they import, write RESULTS.md sections without losing the others, and the step profile adds up."""
import importlib
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCH.glob("bench_*.py"))


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    for name in ("common", *SCRIPTS):
        sys.modules.pop(name, None)
    return importlib


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_benchmark_script_imports(bench, script):
    module = bench.import_module(script)
    assert callable(module.main)


def test_write_section_replaces_only_its_own_section(bench, tmp_path, monkeypatch):
    common = bench.import_module("common")
    monkeypatch.setattr(common, "RESULTS", tmp_path / "RESULTS.md")
    common.write_section("A", "first")
    common.write_section("B", common.table([{"run": "x", "tokens/s": 123.456}]))
    common.write_section("A", "second")
    text = (tmp_path / "RESULTS.md").read_text()
    assert "second" in text and "first" not in text and "| x | 123 |" in text
    assert text.index("## A") < text.index("## B")


def test_step_profile_accounts_for_the_step(bench, toy, toy_text):
    """ProfileOneStep's categories plus the time outside torch ops add up to the step's wall time,
    and the matrix multiplies carry FLOPs (the 'inside the matmuls' figure divides by them)."""
    from labkit.training import train

    bt = bench.import_module("bench_training")
    model, tok = toy
    prof = bt.ProfileOneStep(step=1)
    train(model, tok, toy_text, method="lora", steps=2, batch_size=4, callbacks=[prof], live=False)
    wall, seconds, mm_flops = prof.breakdown()
    assert wall > 0 and mm_flops > 0
    assert set(seconds) <= {name for name, _ in bt.CATEGORIES}
    assert 0 < sum(seconds.values()) <= wall * 1.05


def test_rlhf_bench_head_timing_runs_both_heads(bench, monkeypatch):
    """head_alone times TRL's chunked head and labkit's full-logits head on the same shapes."""
    import labkit
    from labkit.toy import toy_model

    bench_rlhf = bench.import_module("bench_rlhf")
    monkeypatch.setattr(labkit, "load_model", lambda: toy_model())
    times = bench_rlhf.head_alone(tokens=16, repeats=1)
    assert set(times) == {bench_rlhf.TRL, bench_rlhf.LAB} and all(t > 0 for t in times.values())


def test_forgetting_seeds_uses_notebook_04s_own_config(bench):
    """The seed benchmark runs the notebook's experiment, read from its config cell, per profile."""
    seeds = bench.import_module("bench_forgetting_seeds")
    cpu, smoke = seeds.notebook_config("cpu"), seeds.notebook_config("smoke")
    assert cpu["steps"] > smoke["steps"] and cpu["full_rates"] != smoke["full_rates"]
    assert {"domain", "batch_size", "max_length", "replay_share", "probe_sizes", "seed"} <= set(cpu)


def test_rlhf_seeds_reads_a_candidate_setting_and_refuses_an_unknown_one(bench):
    seeds = bench.import_module("bench_rlhf_seeds")
    assert seeds.parse_setting("dpo_max_length=96") == ("dpo_max_length", 96)
    assert seeds.parse_setting("dpo_beta=0.2") == ("dpo_beta", 0.2)
    with pytest.raises(SystemExit, match="dpo_max_len.*RLHFConfig's fields"):
        seeds.parse_setting("dpo_max_len=96")
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        seeds.parse_setting("dpo_max_length")


def test_function_seeds_uses_notebook_02s_own_config(bench):
    """The 'function' seed benchmark trains notebook 02's config, read from its config cell (without
    loading a model), per profile."""
    seeds = bench.import_module("bench_function_seeds")
    (cpu, cpu_exp), (smoke, _) = seeds.notebook_config("cpu"), seeds.notebook_config("smoke")
    assert cpu.steps > smoke.steps and cpu.method == "full"
    assert " of" in cpu_exp["targets"] and "The function" in cpu_exp["contexts"]


def test_across_seeds_reads_the_mean_spread_and_range(bench):
    common = bench.import_module("common")
    assert common.across_seeds([1.0, 2.0, 3.0]) == "mean 2 (standard deviation across seeds 1; from 1 to 3)"
    assert common.across_seeds([15.0, 0.0, 7.5], number="+.1f", unit=" points") == \
        "mean +7.5 points (standard deviation across seeds 7.5; from +0.0 to +15.0)"


@pytest.mark.parametrize("script", ["bench_forgetting_seeds", "bench_function_seeds", "bench_grpo_seeds", "bench_rlhf_seeds"])
def test_seed_benchmarks_help_prints_their_docstring(bench, script, monkeypatch, capsys):
    """``--help`` says what the benchmark measures (its docstring), above the shared options."""
    module = bench.import_module(script)
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    with pytest.raises(SystemExit):
        module.main()
    text = capsys.readouterr().out
    assert module.__doc__.strip().splitlines()[0] in text and "--seeds" in text


def test_rlhf_seed_settings_name_their_section_and_command(bench, monkeypatch):
    """A candidate setting (``--set``) is spelt out in the section's first line and its name, the way
    "DPO shortening across seeds (cpu, dpo_max_length=96, dpo_steps=6)" reads."""
    seeds = bench.import_module("bench_rlhf_seeds")
    monkeypatch.setattr(sys, "argv", ["bench", "--seeds", "1", "--set", "dpo_max_length=96", "dpo_steps=6"])
    args, overrides = seeds.settings_arguments("doc", "dpo_max_length=96")
    assert overrides == {"dpo_max_length": 96, "dpo_steps": 6} and args.seeds == [1]
    assert seeds.set_flag(args) == " --set dpo_max_length=96 dpo_steps=6"
    assert seeds.settings_suffix(overrides) == ", dpo_max_length=96, dpo_steps=6"
    monkeypatch.setattr(sys, "argv", ["bench"])
    args, overrides = seeds.settings_arguments("doc", "dpo_max_length=96")
    assert overrides == {} and seeds.set_flag(args) == "" and seeds.settings_suffix(overrides) == ""
