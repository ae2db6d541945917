"""Standard evaluation with lm-evaluation-harness: a clear error where it is missing, and the call
it makes where it is there (a stand-in package with lm-eval's entry points: the real one needs
a network for its tasks' data)."""
import sys
import textwrap

import pytest

from labkit import evaluation

# lm-eval's documented result shape: results[task][f"{metric},{filter}"], stderr beside each metric.
FAKE_HARNESS = '''
CALLS = []


def simple_evaluate(model, tasks=None, num_fewshot=None, limit=None, log_samples=True, random_seed=0,
                    apply_chat_template=False):
    CALLS.append(dict(model=model, tasks=tasks, num_fewshot=num_fewshot, limit=limit, log_samples=log_samples,
                      random_seed=random_seed, apply_chat_template=apply_chat_template))
    return {"results": {"arc_easy": {"alias": "arc_easy", "acc,none": 0.5, "acc_stderr,none": 0.05,
                                     "acc_norm,none": 0.75, "acc_norm_stderr,none": "N/A"},
                        "gsm8k": {"exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": 0.1}},
            "n-samples": {"arc_easy": {"original": 2376, "effective": 4}, "gsm8k": {"effective": 4}}}
'''
FAKE_HFLM = '''
class HFLM:
    def __init__(self, pretrained, tokenizer=None, batch_size=1):
        self.pretrained, self.tokenizer, self.batch_size = pretrained, tokenizer, batch_size
'''


@pytest.fixture
def fake_harness(tmp_path, monkeypatch):
    package = tmp_path / "lm_eval"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(FAKE_HARNESS))
    (package / "models" / "__init__.py").write_text("")
    (package / "models" / "huggingface.py").write_text(textwrap.dedent(FAKE_HFLM))
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "lm_eval" or m.startswith("lm_eval.")]:
        monkeypatch.delitem(sys.modules, name)
    yield
    for name in [m for m in sys.modules if m == "lm_eval" or m.startswith("lm_eval.")]:
        del sys.modules[name]


def test_without_the_harness_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setattr(evaluation, "harness_available", lambda: False)
    with pytest.raises(ModuleNotFoundError, match=r'not installed here\. Install it \(pip install "lm-eval\[hf\]"\)'):
        evaluation.run_harness(object(), object(), tasks=["arc_easy"], limit=4)


@pytest.mark.parametrize("kwargs, message", [
    (dict(tasks=[]), r"tasks=\[\]: give task names"), (dict(tasks=["arc_easy", ""]), "give task names"),
    (dict(limit=0), "limit=0: give a positive number"), (dict(limit=2.5), "limit=2.5")])
def test_bad_arguments_are_refused_before_the_harness_is_looked_for(monkeypatch, kwargs, message):
    monkeypatch.setattr(evaluation, "harness_available", lambda: pytest.fail("looked for the harness first"))
    with pytest.raises(ValueError, match=message):
        evaluation.run_harness(object(), object(), **kwargs)


def test_the_harness_gets_the_model_in_memory_and_its_results_become_rows(fake_harness):
    model, tok = object(), object()
    assert evaluation.harness_available()
    rows = evaluation.run_harness(model, tok, tasks="arc_easy", limit=4, chat_template=True, seed=3)
    (call,) = sys.modules["lm_eval"].CALLS       # the stand-in's record of its calls
    assert call["model"].pretrained is model and call["model"].tokenizer is tok and call["model"].batch_size == 8
    assert call["tasks"] == ["arc_easy"] and call["limit"] == 4 and call["num_fewshot"] is None
    assert call["apply_chat_template"] is True and call["log_samples"] is False and call["random_seed"] == 3
    assert rows == [
        {"task": "arc_easy", "metric": "acc", "value": 0.5, "stderr": 0.05, "samples": 4},
        {"task": "arc_easy", "metric": "acc_norm", "value": 0.75, "stderr": None, "samples": 4},
        {"task": "gsm8k", "metric": "exact_match (strict-match)", "value": 0.25, "stderr": 0.1, "samples": 4}]


def test_the_lab_names_its_own_checks_and_the_command_line_equivalent():
    names = [c["check"] for c in evaluation.OWN_CHECKS]
    assert "scoring.format_checks" in names
    assert "IFEval" in next(c for c in evaluation.OWN_CHECKS if c["check"] == "scoring.format_checks")[
        "standard it resembles"]
    from labkit import scoring

    assert callable(scoring.format_checks) and callable(scoring.score_replies)   # the names it gives exist
    command = evaluation.what_to_run("HuggingFaceTB/SmolLM2-135M-Instruct", ["arc_easy", "ifeval"], limit=50,
                                     adapter="outputs/adapter")
    assert command.splitlines()[1] == ("lm_eval --model hf --model_args pretrained=HuggingFaceTB/SmolLM2-135M-Instruct,"
                                       "peft=outputs/adapter --tasks arc_easy,ifeval --limit 50 --batch_size 8")
