"""Every name that labkit.patches replaces or relies on still exists, with the arguments it uses.

Fast (no model, no training): these fail first, and clearly, when a TRL, transformers or PEFT
upgrade moves what a patch reaches into. The behaviour tests (losses match TRL's to 1e-4, the
adapter's contribution survives bf16) are named in labkit/patches.py's table."""
import dataclasses
import inspect

import pytest

COMPUTE_LOSS = ["self", "model", "inputs", "return_outputs", "num_items_in_batch"]


def names_looked_up(func) -> set[str]:
    """The global and attribute names ``func`` (and the functions defined inside it) look up when it runs."""
    codes, names = [func.__code__], set()
    while codes:
        code = codes.pop()
        names |= set(code.co_names)
        codes += [c for c in code.co_consts if inspect.iscode(c)]
    return names


def test_trls_chunked_head_is_still_where_full_logits_on_cpu_swaps_it():
    """full_logits_on_cpu replaces the module attribute trl.trainer.utils._ChunkedLogProbFunction;
    that only works while TRL's fused LM head looks the name up there at call time."""
    import trl.trainer.utils as trl_utils
    from trl.kernels import ChunkedLogProbFunction

    assert trl_utils._ChunkedLogProbFunction is ChunkedLogProbFunction
    assert callable(trl_utils._ChunkedLogProbFunction.apply)
    assert "_ChunkedLogProbFunction" in names_looked_up(trl_utils.add_fused_lm_head), \
        "TRL's fused LM head no longer calls trl.trainer.utils._ChunkedLogProbFunction: the swap does nothing"


def test_full_logits_head_takes_the_arguments_of_trls_chunked_head():
    """labkit's stand-in is called with the same positional arguments as TRL's head, and computes
    every optional output TRL may ask for."""
    import trl.kernels.chunked_logprob as chunked
    import trl.trainer.utils as trl_utils

    from labkit.patches import full_logits_log_probs

    theirs = list(inspect.signature(trl_utils._ChunkedLogProbFunction.forward).parameters)[1:]   # after ctx
    ours = list(inspect.signature(full_logits_log_probs).parameters)
    assert theirs == ours, f"TRL's chunked LM head now takes {theirs}; labkit's stand-in takes {ours}"
    assert chunked.OPTIONAL_OUTPUTS == ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1"), \
        f"TRL's head now offers {chunked.OPTIONAL_OUTPUTS}; full_logits_log_probs computes the four above"


@pytest.mark.parametrize("trainer", ["transformers.Trainer", "trl.SFTTrainer", "trl.DPOTrainer",
                                     "trl.GRPOTrainer", "trl.RewardTrainer"])
def test_compute_loss_takes_the_arguments_guarded_passes(trainer):
    """guarded() overrides compute_loss and passes these by name; model_loss_on_cpu calls
    transformers.Trainer.compute_loss in place of SFTTrainer's."""
    import importlib

    module, name = trainer.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    params = list(inspect.signature(cls.compute_loss).parameters)
    assert params == COMPUTE_LOSS, f"{trainer}.compute_loss now takes {params}"


def test_trainer_fields_guarded_reads_still_exist():
    """guarded reads self.args.bf16 (adapter sums only under bf16) and self.state.global_step."""
    from transformers import TrainerState, TrainingArguments

    assert "bf16" in {f.name for f in dataclasses.fields(TrainingArguments)}
    assert "global_step" in {f.name for f in dataclasses.fields(TrainerState)}


def test_peft_layers_still_add_the_adapter_to_their_base_layers_output():
    """adapter_sums_in_float32 hooks the output of every BaseTunerLayer's get_base_layer(); that
    changes the sum only while LoRA's forward calls self.base_layer(...) and adds to the result."""
    from peft.tuners.lora.layer import Linear
    from peft.tuners.tuners_utils import BaseTunerLayer

    assert issubclass(Linear, BaseTunerLayer)
    assert list(inspect.signature(BaseTunerLayer.get_base_layer).parameters) == ["self"]
    assert {"base_layer", "lora_A", "lora_B", "scaling"} <= names_looked_up(Linear.forward)


def test_the_gguf_loaders_progress_bar_is_still_where_no_gguf_progress_bar_switches_it_off():
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    from labkit.patches import no_gguf_progress_bar

    original = gguf_utils.tqdm
    with no_gguf_progress_bar():
        assert gguf_utils.tqdm(range(3)).disable
    assert gguf_utils.tqdm is original
