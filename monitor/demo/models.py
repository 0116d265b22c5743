"""Build small, seeded causal language models, tokenizers and LoRA adapters locally.

No model hub is reachable where the monitor is developed and tested, so the
demo and the tests build their own: a byte-level BPE tokenizer trained with
``tokenizers`` and a GPT-2- or Llama-shaped model with random (seeded) or
briefly trained weights, saved as an ordinary Hugging Face model folder that
``from_pretrained`` and lm-evaluation-harness load like any other.
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel

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
    model = _init_model(
        arch, len(tokenizer), tokenizer.eos_token_id, seed, n_layer, n_embd, n_head, n_positions
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _init_model(
    arch: str, vocab: int, eos_id: int, seed: int, n_layer: int, n_embd: int, n_head: int, n_positions: int
) -> PreTrainedModel:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if arch == "gpt2":
        gpt2_config = GPT2Config(
            vocab_size=vocab,
            n_positions=n_positions,
            n_embd=n_embd,
            n_layer=n_layer,
            n_head=n_head,
            bos_token_id=eos_id,
            eos_token_id=eos_id,
        )
        return GPT2LMHeadModel(gpt2_config)
    if arch == "llama":
        llama_config = LlamaConfig(
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
        return LlamaForCausalLM(llama_config)
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
    peft_model.save_pretrained(str(out_dir))
    return out_dir


# --------------------------------------------------------------------------- brief training
#
# The builders above make random-weight models for tests that only need shapes.
# The demo needs models that behave like a real base and a real fine-tune, so
# the functions below train them briefly on this machine: plain causal-LM
# pretraining, and a peft LoRA fine-tune with the loss on the completion only.
# Everything is seeded (model init, data order) and runs on the CPU.


@dataclass(frozen=True)
class TrainingSpec:
    """How long and how hard to train; every field goes into the demo's recipe hash."""

    steps: int
    batch_size: int
    #: Longest sequence in tokens: pretraining packs documents into blocks this long.
    seq_len: int
    lr: float
    warmup_steps: int
    seed: int
    weight_decay: float = 0.01


@dataclass(frozen=True)
class TrainingReport:
    """What a training run did: first and last loss (mean over ~10% of the steps) and time."""

    steps: int
    first_loss: float
    last_loss: float
    seconds: float
    tokens: int


def new_gpt2_model(
    tokenizer_dir: Path,
    *,
    seed: int,
    n_layer: int,
    n_embd: int,
    n_head: int,
    n_positions: int = 512,
) -> PreTrainedModel:
    """A seeded, randomly initialised GPT-2 LM for ``tokenizer_dir``, without dropout.

    Dropout is off because a few hundred steps on a small corpus underfit anyway,
    and it makes training independent of the global RNG state.
    """
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    return GPT2LMHeadModel(config)


def pack_documents(
    docs: Sequence[Sequence[int]], *, seq_len: int, eos_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack tokenised documents into ``seq_len`` blocks, greedily and without splitting a document.

    Keeping documents whole matters for the few-shot layout: an example cut off
    from the examples before it teaches nothing about reading a context.  Every
    document ends with EOS; a longer-than-``seq_len`` document is truncated.
    Returns ``(input_ids, labels)``, where padding is labelled ``-100``.
    """
    blocks: list[list[int]] = []
    current: list[int] = []
    for doc in docs:
        ids = [*doc[: seq_len - 1], eos_id]
        if len(current) + len(ids) > seq_len:
            blocks.append(current)
            current = []
        current.extend(ids)
    if current:
        blocks.append(current)
    input_ids = torch.full((len(blocks), seq_len), eos_id, dtype=torch.long)
    labels = torch.full((len(blocks), seq_len), -100, dtype=torch.long)
    for i, block in enumerate(blocks):
        input_ids[i, : len(block)] = torch.tensor(block)
        labels[i, : len(block)] = torch.tensor(block)
    return input_ids, labels


def completion_batch(
    tokenizer: Any, pairs: Sequence[tuple[str, str]], *, seq_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenise ``(prompt, completion)`` pairs with the loss on the completion tokens only.

    Prompt and completion are tokenised separately and concatenated, exactly as a
    log-likelihood scorer splits context and continuation.  Returns right-padded
    ``(input_ids, labels)``; padding is labelled ``-100``.
    """
    rows: list[tuple[list[int], list[int]]] = []
    for prompt, completion in pairs:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"]
        ids = (p + c)[-seq_len:]
        n_completion = min(len(c), len(ids))
        rows.append((ids, [-100] * (len(ids) - n_completion) + ids[len(ids) - n_completion :]))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (ids, labs) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(labs)] = torch.tensor(labs)
    return input_ids, labels


def _lr_at(step: int, spec: TrainingSpec) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < spec.warmup_steps:
        return spec.lr * (step + 1) / spec.warmup_steps
    progress = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
    return spec.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over each answer's tokens, averaged over the batch.

    Every answer token then counts the same whatever the batch holds: the
    category and priority inside a JSON answer get as much weight as a one-token
    routing answer.  (Averaging within each answer first starved the JSON fields;
    the fine-tune learned the JSON layout but answered a constant inside it.)
    """
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    total = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )
    return total / labels.shape[0]


def _train_loop(
    model: torch.nn.Module,
    batches: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    spec: TrainingSpec,
    *,
    answer_loss: bool = False,
    on_step: Callable[[int, int], None] | None = None,
) -> TrainingReport:
    """AdamW over ``spec.steps`` ``(input_ids, labels)`` batches from ``batches(step)``;
    ``on_step(steps done, steps)`` after each step (the build's progress lines).

    Batches are right-padded and padding is labelled ``-100``.  No attention mask
    is needed: with causal attention no real token can see the padding after it.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=spec.lr,
        betas=(0.9, 0.95),
    )
    model.train()
    losses: list[float] = []
    tokens = 0
    started = time.perf_counter()
    for step in range(spec.steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, spec)
        input_ids, labels = batches(step)
        if answer_loss:
            loss = _answer_loss(model(input_ids=input_ids).logits, labels)
        else:
            loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        tokens += int((labels != -100).sum())
        if on_step is not None:
            on_step(step + 1, spec.steps)
    model.eval()
    window = max(1, spec.steps // 10)
    return TrainingReport(
        steps=spec.steps,
        first_loss=sum(losses[:window]) / window,
        last_loss=sum(losses[-window:]) / window,
        seconds=time.perf_counter() - started,
        tokens=tokens,
    )


def pretrain_causal_lm(
    model: torch.nn.Module,
    tokenizer: Any,
    corpora: Sequence[Sequence[str]],
    spec: TrainingSpec,
    *,
    on_step: Callable[[int, int], None] | None = None,
) -> TrainingReport:
    """Train ``model`` in place as a plain causal LM on ``corpora``, in a seeded order.

    Each corpus is packed into blocks on its own, so documents of different
    corpora never share a block (a page of routed tickets stays a page of its
    own).  Epochs are seeded permutations of all blocks, so the same corpora and
    spec always give the same sequence of batches.
    """
    packed = [
        pack_documents(
            tokenizer(list(texts), add_special_tokens=False)["input_ids"],
            seq_len=spec.seq_len,
            eos_id=tokenizer.eos_token_id,
        )
        for texts in corpora
        if texts
    ]
    input_ids = torch.cat([ids for ids, _ in packed])
    labels = torch.cat([labs for _, labs in packed])
    order = _epoch_order(len(input_ids), spec)

    def batches(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = order[step * spec.batch_size : (step + 1) * spec.batch_size]
        return input_ids[idx], labels[idx]

    return _train_loop(model, batches, spec, on_step=on_step)


def _epoch_order(n: int, spec: TrainingSpec) -> torch.Tensor:
    """Indices for ``spec.steps`` batches: concatenated seeded permutations of ``range(n)``."""
    generator = torch.Generator().manual_seed(spec.seed)
    needed = spec.steps * spec.batch_size
    perms = [torch.randperm(n, generator=generator) for _ in range(-(-needed // n))]
    return torch.cat(perms)[:needed]


def train_lora(
    base_dir: Path,
    out_dir: Path,
    pairs: Sequence[tuple[str, str]],
    spec: TrainingSpec,
    *,
    r: int = 8,
    alpha: int = 16,
    target_modules: Sequence[str] = ("c_attn", "c_proj", "c_fc"),
    on_step: Callable[[int, int], None] | None = None,
) -> TrainingReport:
    """Fine-tune a LoRA adapter on ``(prompt, completion)`` pairs and save it with ``save_pretrained``.

    The loss is on the completion tokens only, so the adapter learns to answer
    in the eval set's exact prompt format rather than to model the tickets.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    torch.manual_seed(spec.seed)
    with warnings.catch_warnings():
        # peft 0.21 calls transformers 5's deprecated is_gradient_checkpointing; harmless.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(
            model,
            LoraConfig(
                r=r,
                lora_alpha=alpha,
                lora_dropout=0.0,
                target_modules=list(target_modules),
                fan_in_fan_out=True,
            ),
        )
    order = _epoch_order(len(pairs), spec)

    def batches(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = order[step * spec.batch_size : (step + 1) * spec.batch_size].tolist()
        return completion_batch(tokenizer, [pairs[i] for i in idx], seq_len=spec.seq_len)

    report = _train_loop(peft_model, batches, spec, answer_loss=True, on_step=on_step)
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out_dir))
    return report


def save_model(model: PreTrainedModel, tokenizer_dir: Path, out_dir: Path) -> Path:
    """Save ``model`` with the tokenizer from ``tokenizer_dir`` as one HF model folder."""
    from transformers import AutoTokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out_dir)
    return out_dir


def weights_digest(folder: Path) -> str:
    """SHA-256 over every tensor (name, dtype, shape, bytes) in the folder's safetensors files.

    Hashing tensors rather than file bytes keeps the digest independent of
    safetensors metadata and key order.
    """
    from safetensors.torch import load_file

    digest = hashlib.sha256()
    for file in sorted(folder.glob("*.safetensors")):
        tensors = load_file(file)
        for name in sorted(tensors):
            tensor = tensors[name].contiguous()
            digest.update(f"{file.name}:{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
