"""Build small, seeded causal language models, tokenizers and LoRA adapters locally.

No model hub is reachable where the monitor is developed and tested, so the
demo and the tests build their own: a byte-level BPE tokenizer trained with
``tokenizers`` and a GPT-2- or Llama-shaped model with random (seeded) or
briefly trained weights, saved as an ordinary Hugging Face model folder that
``from_pretrained`` and lm-evaluation-harness load like any other.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

EOS = "<|endoftext|>"


def build_tokenizer(texts: Iterable[str], out_dir: Path, *, vocab_size: int = 512) -> Path:
    """Train a byte-level BPE tokenizer on ``texts`` and save it as a fast tokenizer folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=EOS
    )
    fast.model_max_length = 1024
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return out_dir


def build_base_model(
    out_dir: Path,
    *,
    tokenizer_dir: Path,
    seed: int,
    arch: str = "gpt2",
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_positions: int = 512,
) -> Path:
    """Save a randomly initialised (seeded) causal LM that uses the tokenizer in ``tokenizer_dir``."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = _init_model(arch, len(tokenizer), tokenizer.eos_token_id, seed, n_layer, n_embd, n_head, n_positions)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _init_model(
    arch: str, vocab: int, eos_id: int, seed: int, n_layer: int, n_embd: int, n_head: int, n_positions: int
) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if arch == "gpt2":
        config = GPT2Config(
            vocab_size=vocab,
            n_positions=n_positions,
            n_embd=n_embd,
            n_layer=n_layer,
            n_head=n_head,
            bos_token_id=eos_id,
            eos_token_id=eos_id,
        )
        return GPT2LMHeadModel(config)
    if arch == "llama":
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=n_embd,
            intermediate_size=n_embd * 2,
            num_hidden_layers=n_layer,
            num_attention_heads=n_head,
            num_key_value_heads=max(1, n_head // 2),
            max_position_embeddings=n_positions,
            bos_token_id=eos_id,
            eos_token_id=eos_id,
            tie_word_embeddings=False,
        )
        return LlamaForCausalLM(config)
    raise ValueError(f"unknown architecture {arch!r}; use 'gpt2' or 'llama'")


def build_random_lora(base_dir: Path, out_dir: Path, *, seed: int, r: int = 4) -> Path:
    """Save a LoRA adapter for ``base_dir`` with random, non-zero weights (it changes the outputs)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    targets = ["c_attn"] if model.config.model_type == "gpt2" else ["q_proj", "v_proj"]
    peft_model = get_peft_model(
        model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, init_lora_weights=False)
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(out_dir)
    return out_dir
