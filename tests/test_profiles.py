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
