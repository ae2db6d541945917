"""A toy language model built from a config in a second: the same Llama architecture as
SmolLM2, but two layers 32 wide, with a tiny byte-level tokenizer trained on the spot.
No files are needed, so the tests (and curious learners) can train it instantly."""
from __future__ import annotations

import torch

TOY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

TOY_TEXT = [
    "function add(a, b) { return a + b; }", "def add(a, b):\n    return a + b",
    "The capital of France is Paris.", "The patient was ready for discharge.",
    "The court granted the motion to dismiss.", "Write a poem about summer.",
    "The quick brown fox jumps over the lazy dog.", "One, two, three, four, five.",
]


def toy_tokenizer(vocab_size: int = 320):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TOY_TEXT * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>")
    fast.chat_template = TOY_CHAT_TEMPLATE
    return fast


def toy_model(tokenizer=None, seed: int = 0, hidden_size: int = 32, layers: int = 2):
    """``(model, tokenizer)``: a randomly initialised two-layer Llama."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or toy_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id)
    model = LlamaForCausalLM(config).eval()
    return model, tokenizer
