"""Tiny random models for tests and smoke runs: built offline in a second, never downloaded."""

from __future__ import annotations

from pathlib import Path

CHATML_TEMPLATE = (
    "{% for m in messages %}"
    "{% if loop.first and m['role'] != 'system' %}<|im_start|>system\nYou are helpful.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b\n",
    "What is 12 plus 30? The answer is 42.",
    "Paris is the capital of France. Water boils at 100 degrees Celsius.",
    "First, count the apples. Then subtract the eaten ones. So 5 - 2 = 3.",
] * 20


def build_tokenizer(chat_template: bool = True, vocab_size: int = 512):
    """A byte-level BPE tokenizer with ChatML special tokens (and template, if asked)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>"
                                   if chat_template else "<|endoftext|>", pad_token="<pad>")
    if chat_template:
        fast.chat_template = CHATML_TEMPLATE
    return fast


def build_model(tokenizer, seed: int = 0, hidden: int = 64, layers: int = 2):
    """A random Llama small enough to train in seconds on a CPU."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


def save_tiny_model(path: str | Path, chat_template: bool = True, seed: int = 0) -> Path:
    """Write a tiny model folder that `raysel.models.load_model` (and plain transformers) can load."""
    path = Path(path)
    tokenizer = build_tokenizer(chat_template)
    build_model(tokenizer, seed).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
