"""Safety: weights as safetensors only, no remote code, nothing unpickled."""
import re
from pathlib import Path

LABKIT = Path(__file__).resolve().parent.parent / "labkit"


def sources():
    return {p.name: p.read_text() for p in LABKIT.rglob("*.py")}


def test_no_remote_code_and_no_pickle():
    for name, text in sources().items():
        assert "trust_remote_code=True" not in text, name
        assert not re.search(r"\bpickle\.load|\btorch\.load\(|\bjoblib\.load", text), name


def test_weights_are_saved_as_safetensors():
    for name, text in sources().items():
        for call in re.findall(r"save_pretrained\([^)]*\)", text):
            assert "safe_serialization=False" not in call, f"{name}: {call}"
