import pytest

from labkit.profiles import PROFILE_NAMES, profile


def test_each_profile_is_bigger_than_the_last():
    smoke, cpu, gpu = (profile(n) for n in PROFILE_NAMES)
    for field in ("train_steps", "eval_items", "max_length"):
        assert getattr(smoke, field) < getattr(cpu, field) < getattr(gpu, field)


def test_env_variable_chooses_and_bad_names_are_refused(monkeypatch):
    monkeypatch.setenv("LABKIT_PROFILE", "cpu")
    assert profile().name == "cpu"
    monkeypatch.setenv("LABKIT_PROFILE", "laptop")
    with pytest.raises(ValueError, match="LABKIT_PROFILE"):
        profile()


def test_overrides_and_pick():
    p = profile("smoke", train_steps=7)
    assert p.train_steps == 7
    assert p.pick(smoke=1, cpu=2, gpu=3) == 1
    with pytest.raises(ValueError, match="unknown profile field"):
        profile("smoke", steps=3)
    with pytest.raises(ValueError, match="smoke"):
        p.pick(cpu=2)


def test_gpu_profile_uses_mixed_precision():
    assert profile("gpu").mixed_precision in ("bf16", "fp16")


@pytest.mark.parametrize("gpu, fp16, bf16", [("T4", True, False), ("A100", False, True)])
def test_the_trainer_gets_the_gpus_precision(monkeypatch, fake_gpu, gpu, fp16, bf16):
    """A T4 trains in fp16, which the Trainer pairs with loss scaling (a GradScaler); an A100 in
    bf16. (SFTConfig itself would set up the faked GPU, so its keywords are caught instead.)"""
    import trl

    from labkit.training import TrainConfig, sft_config

    monkeypatch.delenv("LABKIT_PROFILE", raising=False)
    fake_gpu(gpu)
    monkeypatch.setattr(trl, "SFTConfig", dict)
    args = sft_config(TrainConfig().resolved(profile()), "unused", has_eval=False, device="cuda")
    assert (args["fp16"], args["bf16"], args["use_cpu"]) == (fp16, bf16, False)


@pytest.mark.parametrize("name, expected", [("smoke", False), ("cpu", False), ("gpu", True)])
def test_gradient_checkpointing_follows_the_profile(monkeypatch, name, expected):
    """Off on the CPU (it cost a quarter of a LoRA step there: benchmarks/bench_checkpointing.py),
    on in ``gpu`` (TRL's default); an explicit setting wins."""
    import trl

    from labkit.training import TrainConfig, sft_config

    monkeypatch.setattr(trl, "SFTConfig", dict)
    args = sft_config(TrainConfig().resolved(profile(name)), "unused", has_eval=False, device="cpu")
    assert args["gradient_checkpointing"] is expected
    explicit = TrainConfig(gradient_checkpointing=not expected).resolved(profile(name))
    assert explicit.gradient_checkpointing is (not expected)
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        TrainConfig(gradient_checkpointing="yes").validate()
