"""The ``hf`` backend: in-process inference with transformers and peft.

This is the only module that imports transformers and peft; their exceptions
are converted here into :class:`~monitor.errors.ModelLoadError` and
:class:`~monitor.errors.AdapterMismatchError`.

Scores agree with lm-evaluation-harness 0.4.x ``HFLM.loglikelihood`` (same
tokenisation, BOS and empty-context rules, left truncation, greedy check) but
each unique token is computed once: the prefix shared by all requests of a
call is run once and its key/value cache kept across calls, and the rest of
each item is packed as a token tree (see :mod:`monitor.backends.hf.packing`).
At load, a tiny probe compares tree scoring with plain scoring; an
architecture that ignores ``position_ids`` or custom masks falls back to the
plain path (``describe()["packing"]`` says which).

A LoRA adapter is merged into the weights in float32 (exact to rounding, and
measured as fast as the bare base, while unmerged LoRA layers cost up to ~15%
on CPU) and kept unmerged in half precision, where merging would round the
small delta into the base weights.

Deliberate differences from lm-eval, all outside what lm-eval can run:
an empty continuation scores 0.0 (lm-eval asserts), a context that tokenises to
nothing (whitespace only) is conditioned on the prefix token like an empty one
(lm-eval asserts), and log-softmax is taken in float32 whatever the model dtype
(lm-eval uses the model dtype, which only matters in half precision).  Within
float rounding: transformers' ``gelu_new`` activation (GPT-2) runs as torch's
fused kernel for the same formula.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import importlib.metadata
import inspect
import math
import re
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from monitor.backends.hf.chat import ChatRenderer, transformers_silenced
from monitor.backends.hf.imports import long_lived_imports

with long_lived_imports():
    import torch

from monitor.backends.base import (
    ChatTemplate,
    GenerationRequest,
    GenerationResult,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    ModelFingerprint,
    ProgressCallback,
    Sampling,
    cut_at_stop,
    one_line,
)
from monitor.backends.fingerprint import fingerprint_model, stack_files
from monitor.backends.hf.packing import (
    ScoredSequence,
    batch_rows,
    build_tree,
    common_prefix_length,
    make_batch,
    pack_rows,
    shared_prefix_length,
)
from monitor.errors import AdapterMismatchError, BackendError, ModelLoadError

#: Keys and values of every layer, each (batch, kv_heads, tokens, head_dim).
KV = list[tuple[torch.Tensor, torch.Tensor]]

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}
#: lm-eval's HFLM._DEFAULT_MAX_LENGTH, used when neither config nor tokenizer names one.
_DEFAULT_MAX_LENGTH = 2048
#: transformers' "no limit" marker for tokenizer.model_max_length.
_TOKENIZER_INFINITY = 1000000000000000019884624838656
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_MIN_ROW_TOKENS = 128
_MAX_ROW_TOKENS = 512
_MIN_CPU_BATCH_TOKENS = 2048
_MAX_CPU_BATCH_TOKENS = 8192
_CPU_PASS_BYTES = 512 * 2**20
#: Shared prefixes whose keys and values are kept; the least recently used goes first.
_PREFIX_CACHE_ENTRIES = 4


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` into a device that exists here."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"unknown device {spec!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {spec!r} requested but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelLoadError(
                f"device {spec!r} requested but only {torch.cuda.device_count()} GPU(s) exist"
            )
    elif device.type not in ("cpu", "mps"):
        raise ModelLoadError(f"unsupported device {spec!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return device


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """Turn ``auto`` or a dtype name into a torch dtype.

    ``auto`` is bfloat16 on a GPU that supports it, float16 on other GPUs and
    float32 elsewhere (half precision on CPU is slow and inaccurate).
    """
    if spec == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return _DTYPES[spec.removeprefix("torch.").lower()]
    except KeyError:
        names = ", ".join(sorted({"auto", "float32", "bfloat16", "float16"}))
        raise ModelLoadError(f"unknown dtype {spec!r}; use one of {names}") from None


class HFBackend:
    """A causal language model (plus an optional LoRA adapter) served in this process.

    Build it with :meth:`load`.  Implements :class:`monitor.backends.base.Backend`.
    ``tokens_run`` counts the token positions run through the model so far,
    padding included: the cost that packing and prefix caching save.
    """

    def __init__(
        self,
        *,
        model: Any,
        tokenizer: Any,
        base: str,
        adapter: str | None,
        revision: str | None,
        device: torch.device,
        dtype: torch.dtype,
        adapter_merged: bool,
        batch_tokens: int,
        packed: bool,
    ) -> None:
        """Wrap an already loaded model; use :meth:`load` instead."""
        self._model: Any = model
        self._tokenizer = tokenizer
        self._base = base
        self._adapter = adapter
        self._revision = revision
        self._device = device
        self._dtype = dtype
        self._adapter_merged = adapter_merged
        self._batch_tokens = batch_tokens
        self._packed = packed
        self._packing_note = "enabled" if packed else "disabled by the caller"
        self._prefix_cache: OrderedDict[tuple[int, ...], KV] = OrderedDict()
        self.tokens_run = 0
        self._chat: ChatRenderer | None = None
        #: The configured chat template that replaced the tokenizer's (``models.NAME.chat_template``).
        self._template_override: str | None = None

        config = model.config
        self._max_length = _max_length(config, tokenizer)
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        # Our custom mask replaces the model's own, so a sliding window would be ignored:
        # sequences longer than the window go through the plain path.
        uses_window = getattr(text_config, "use_sliding_window", True) is not False
        self._sliding_window: int | None = (
            getattr(text_config, "sliding_window", None) if uses_window else None
        )
        params = inspect.signature(model.forward).parameters
        # transformers 5 renamed past_key_values to cache.
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._logits_to_keep = "logits_to_keep" in params
        # lm-eval's HFLM.prefix_token_id: conditions empty contexts, and strings starting
        # with its text are encoded without special tokens.
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        self._prefix_id: int = bos if bos is not None else eos
        self._eos_id: int | None = eos
        self._prefix_text: str = tokenizer.decode(self._prefix_id) if self._prefix_id is not None else ""
        pad = tokenizer.pad_token_id
        self._pad_id: int = pad if pad is not None else (eos if eos is not None else 0)
        if self._packed:
            with transformers_silenced():
                self._check_packing()
            self.tokens_run = 0

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(
        cls,
        base: str,
        adapter: str | None = None,
        *,
        device: str = "auto",
        dtype: str = "auto",
        batch_tokens: int | None = None,
        revision: str | None = None,
        packed: bool = True,
        merge_adapter: bool | None = None,
        chat_template: str | None = None,
    ) -> HFBackend:
        """Load ``base`` (a local folder or a hub id in the local cache) and optionally a LoRA ``adapter``.

        ``batch_tokens`` bounds the token positions of one forward pass, each
        row's copy of the cached shared prefix included (default 16384 on GPU;
        on CPU 2048, up to 8192 for small models: :func:`_default_batch_tokens`).
        ``packed=False`` scores every continuation as its own sequence, exactly
        as lm-eval does (slow; for comparisons).
        ``chat_template`` (Jinja text) replaces the tokenizer's own template, as vLLM's
        ``--chat-template`` does; the fingerprint's stack records its hash.
        ``merge_adapter`` folds LoRA weights into the base weights; by default
        only in float32, where merging is exact to rounding: in half precision
        the small LoRA delta would be rounded into the base weights.

        Raises :class:`ModelLoadError` when the base or adapter cannot be loaded
        and :class:`AdapterMismatchError` when the adapter does not fit the base.
        """
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        base_dir = _local_source(base, "base model", "config.json")
        adapter_dir = _local_source(adapter, "adapter", "adapter_config.json") if adapter else None
        if batch_tokens is not None and batch_tokens < 1:
            raise ModelLoadError(f"batch_tokens must be positive, got {batch_tokens}")
        model, tokenizer = _load_base(base, revision, torch_dtype)
        if chat_template is not None:
            tokenizer.chat_template = chat_template
        merged = False
        if adapter is not None:
            peft_model = _attach_adapter(model, tokenizer, adapter, base, revision)
            merged = torch_dtype == torch.float32 if merge_adapter is None else merge_adapter
            # Call the transformers model with the LoRA layers injected, not the peft wrapper:
            # same computation, and the forward signature we inspect is the real one.
            model = peft_model.merge_and_unload() if merged else peft_model.get_base_model()
        model.to(torch_device)
        model.eval()
        _fuse_gelu(model)
        if batch_tokens is None:
            batch_tokens = _default_batch_tokens(torch_device, model.config, tokenizer)
        backend = cls(
            model=model,
            tokenizer=tokenizer,
            base=str(base_dir) if base_dir else base,
            adapter=str(adapter_dir) if adapter_dir else adapter,
            revision=revision,
            device=torch_device,
            dtype=torch_dtype,
            adapter_merged=merged,
            batch_tokens=batch_tokens,
            packed=packed,
        )
        backend._template_override = chat_template
        return backend

    # ------------------------------------------------------------------ Backend protocol

    def loglikelihood(
        self,
        requests: Sequence[LoglikelihoodRequest],
        *,
        progress: ProgressCallback | None = None,
    ) -> list[LoglikelihoodResult]:
        """Sum the log-probabilities of every continuation of every request, as lm-eval does."""
        self._require_model()
        encoded = self._encode_requests(requests)
        sequences: list[ScoredSequence] = []
        owners: list[int] = []  # request index of each sequence
        for index, pairs in enumerate(encoded):
            for context, continuation in pairs:
                if continuation:
                    sequences.append(ScoredSequence(tuple(context + continuation), len(context)))
                    owners.append(index)
        tracker = _Progress(owners, len(requests), progress)
        with self._inference_errors():
            totals, greedy = self._score(sequences, tracker)

        results: list[LoglikelihoodResult] = []
        seq_id = 0
        for pairs in encoded:
            lls: list[float] = []
            flags: list[bool] = []
            for _, continuation in pairs:
                if continuation:
                    lls.append(float(totals[seq_id]))
                    flags.append(bool(greedy[seq_id]))
                    seq_id += 1
                else:  # the empty string is certain
                    lls.append(0.0)
                    flags.append(True)
            context_tokens = len(pairs[0][0]) if pairs else 0
            results.append(
                LoglikelihoodResult(
                    loglikelihoods=tuple(lls),
                    is_greedy=tuple(flags),
                    context_tokens=min(context_tokens, self._max_length),
                    continuation_tokens=tuple(len(c) for _, c in pairs),
                )
            )
        return results

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        progress: ProgressCallback | None = None,
    ) -> list[GenerationResult]:
        """Decode greedily until a stop sequence, the end-of-text token or ``max_new_tokens``.

        Prompts of similar length are batched with left padding; the result is
        the same for a request whatever else is in the call, up to float noise.
        """
        self._require_model()
        prompts = self._encode([r.prompt for r in requests])
        for i, (request, ids) in enumerate(zip(requests, prompts, strict=True)):
            # Leave room for the answer, as lm-eval does (left truncation).
            room = max(1, self._max_length - max(request.max_new_tokens, 0))
            prompts[i] = (ids or [self._prefix_id])[-room:]
        results: list[GenerationResult | None] = [None] * len(requests)
        for batch in self._generation_batches(prompts, requests):
            with self._inference_errors():
                outs = self._generate_batch([prompts[j] for j in batch], [requests[j] for j in batch])
            for j, out in zip(batch, outs, strict=True):
                results[j] = out
            if progress is not None:
                progress(len(batch))
        return [r for r in results if r is not None]

    def count_tokens(self, text: str) -> int:
        """The number of tokens ``text`` costs as a prompt (special tokens included)."""
        return len(self._encode([text])[0])

    def fingerprint(self) -> ModelFingerprint:
        """Content hashes of the base weights and adapter (cached by file size and mtime)."""
        weights = fingerprint_model(self._base, self._adapter, revision=self._revision)
        stack = dict(stack_files(self._base, revision=self._revision))
        stack.update(self._special_tokens())
        if self._template_override is not None:
            stack["chat_template/configured"] = (
                "sha256:" + hashlib.sha256(self._template_override.encode()).hexdigest()
            )
        chat = self.chat_template()
        if chat is not None:
            stack["chat_template/rendered"] = chat.sha256
        return dataclasses.replace(weights, stack=dict(sorted(stack.items())))

    def _special_tokens(self) -> dict[str, str]:
        """The special tokens the model is run with, as ``special/<name>`` -> ``text (id)``."""
        out = {}
        for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
            text = getattr(self._tokenizer, name, None)
            if text is not None:
                out[f"special/{name}"] = f"{text} ({self._tokenizer.convert_tokens_to_ids(text)})"
        return out

    def chat_template(self) -> ChatTemplate | None:
        """The tokenizer's chat template (None without one), probed once for a system role
        (:meth:`monitor.backends.hf.chat.ChatRenderer.template`)."""
        return self._renderer().template()

    def render_chat(self, messages: Sequence[tuple[str, str]]) -> str:
        """``messages`` through the tokenizer's ``apply_chat_template`` with the generation prompt.

        Raises :class:`BackendError` when the model has no template or the template refuses the conversation.
        """
        return self._renderer().render(messages)

    def _renderer(self) -> ChatRenderer:
        if self._chat is None:
            self._chat = ChatRenderer(self._tokenizer, self._base)
        return self._chat

    def describe(self) -> dict[str, Any]:
        """Device, dtype, attention implementation, adapter handling and library versions."""
        config = self._model.config if self._model is not None else None
        return {
            "backend": "hf",
            "base": self._base,
            "adapter": self._adapter,
            "revision": self._revision,
            "device": str(self._device),
            "dtype": str(self._dtype).removeprefix("torch."),
            "attn_implementation": getattr(config, "_attn_implementation", None),
            "adapter_merged": self._adapter_merged if self._adapter else None,
            "packing": self._packing_note,
            "batch_tokens": self._batch_tokens,
            "max_length": self._max_length,
            "chat_template": _template_facts(self.chat_template()) if self._model is not None else None,
            "torch": torch.__version__,
            "transformers": _version("transformers"),
            "peft": _version("peft"),
        }

    def close(self) -> None:
        """Drop the model and cached prefixes and give the memory back."""
        self._model = None
        self._prefix_cache.clear()
        gc.collect()
        if self._device.type == "cuda":
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ tokenisation

    def _encode(self, texts: Sequence[str], *, special: bool | None = None) -> list[list[int]]:
        """Token ids of each text, as lm-eval's ``HFLM.tok_encode`` makes them.

        By default special tokens (BOS for tokenizers that add one) are added,
        except to a text that already starts with the prefix token's text.
        All texts are encoded in one batched call of the fast tokenizer.
        """
        unique = list(dict.fromkeys(texts))
        if special is None and self._prefix_text:
            plain = [t for t in unique if not t.startswith(self._prefix_text)]
            has_bos = [t for t in unique if t.startswith(self._prefix_text)]
            ids = dict(zip(plain, self._tokenize(plain, True), strict=True))
            ids.update(zip(has_bos, self._tokenize(has_bos, False), strict=True))
        else:
            ids = dict(zip(unique, self._tokenize(unique, True if special is None else special), strict=True))
        return [list(ids[t]) for t in texts]

    def _tokenize(self, texts: list[str], special: bool) -> list[list[int]]:
        """Token ids of each text, as the tokenizer's ``__call__`` gives them.

        A fast tokenizer's ``__call__`` sets up its Rust backend (truncation,
        padding, special-token splitting) and runs ``encode_batch``; once it has
        done so for the first text, the others go to ``encode_batch_fast``, the
        same encoding without character offsets, in about 40% less time.
        """
        if not texts:
            return []
        ids = list(self._tokenizer(texts[:1], add_special_tokens=special)["input_ids"])
        if len(texts) == 1:
            return ids
        fast = getattr(getattr(self._tokenizer, "backend_tokenizer", None), "encode_batch_fast", None)
        if fast is None:
            return ids + list(self._tokenizer(texts[1:], add_special_tokens=special)["input_ids"])
        return ids + [encoding.ids for encoding in fast(texts[1:], add_special_tokens=special)]

    def _encode_requests(
        self, requests: Sequence[LoglikelihoodRequest]
    ) -> list[list[tuple[list[int], list[int]]]]:
        """(context tokens, continuation tokens) for every continuation, by lm-eval's rules.

        A context's trailing whitespace moves onto each continuation; the
        continuation's tokens are those of ``encode(context + continuation)``
        past the length of ``encode(context)``.  An empty context is the prefix
        token (BOS, else EOS) unless the continuation already starts with it.
        """
        contexts: list[str] = []
        wholes: list[str] = []
        bare: list[str] = []  # continuations of empty contexts, encoded without special tokens
        for request in requests:
            if request.context == "":
                bare.extend(request.continuations)
                continue
            context = request.context if request.exact_boundary else request.context.rstrip()
            spaces = request.context[len(context) :]
            contexts.append(context)
            wholes.extend(context + spaces + c for c in request.continuations)
        ids = iter(self._encode(contexts + wholes))
        context_ids = [next(ids) for _ in contexts]
        whole_ids = ids
        bare_ids = iter(self._encode(bare, special=False))

        out: list[list[tuple[list[int], list[int]]]] = []
        contexts_iter = iter(context_ids)
        for request in requests:
            pairs: list[tuple[list[int], list[int]]] = []
            if request.context == "":
                for _ in request.continuations:
                    cont = next(bare_ids)
                    if cont and cont[0] == self._prefix_id:
                        pairs.append((cont[:1], cont[1:]))
                    else:
                        pairs.append(([self._prefix_id], cont))
            else:
                context_enc = next(contexts_iter)
                for _ in request.continuations:
                    whole = next(whole_ids)
                    if context_enc:
                        pairs.append((context_enc, whole[len(context_enc) :]))
                    else:  # whitespace-only context: lm-eval would assert; condition on the prefix token
                        pairs.append(([self._prefix_id], whole))
            out.append(pairs)
        return out

    # ------------------------------------------------------------------ scoring

    def _score(
        self,
        sequences: Sequence[ScoredSequence],
        tracker: _Progress | None = None,
        *,
        packed: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log-probabilities and all-greedy flags of each sequence's scored tokens."""
        totals = torch.zeros(len(sequences), dtype=torch.float64)
        misses = torch.zeros(len(sequences), dtype=torch.long)
        use_packing = self._packed if packed is None else packed
        window = self._max_length + 1
        if self._sliding_window:
            window = min(window, self._sliding_window)
        tree_ids: list[int] = []
        plain_ids: list[int] = []
        for seq_id, seq in enumerate(sequences):
            (tree_ids if use_packing and len(seq.tokens) <= window else plain_ids).append(seq_id)
        with torch.inference_mode():
            if tree_ids:
                self._score_trees(sequences, tree_ids, totals, misses, tracker)
            if plain_ids:
                self._score_plain(sequences, plain_ids, totals, misses, tracker)
        return totals, misses == 0

    def _score_trees(
        self,
        sequences: Sequence[ScoredSequence],
        seq_ids: list[int],
        totals: torch.Tensor,
        misses: torch.Tensor,
        tracker: _Progress | None,
    ) -> None:
        """Score sequences as token trees over a cached shared prefix."""
        chosen = [sequences[i] for i in seq_ids]
        prefix_len = shared_prefix_length(chosen)
        kv = self._prefix_kv(chosen[0].tokens[:prefix_len]) if prefix_len else None
        # One tree per group of sequences with the same context (normally one item).
        groups: dict[tuple[int, ...], list[tuple[int, ScoredSequence]]] = {}
        for seq_id, seq in zip(seq_ids, chosen, strict=True):
            groups.setdefault(seq.tokens[prefix_len : seq.context_len], []).append((seq_id, seq))
        trees = [build_tree(group, prefix_len) for group in groups.values()]
        # Short rows waste little attention on neighbouring items; rows about as long as the
        # prefix keep the per-row copies of its keys and values cheap (measured on CPU).
        row_tokens = min(self._batch_tokens, max(_MIN_ROW_TOKENS, min(prefix_len, _MAX_ROW_TOKENS)))
        rows = pack_rows(trees, row_tokens)
        for batch in batch_rows(rows, self._batch_tokens, prefix_len):
            packed = make_batch(
                batch, prefix_len=prefix_len, pad_id=self._pad_id, dtype=self._dtype, device=self._device
            )
            cache = _cache_from_kv(kv, len(batch)) if kv is not None else None
            lp, hit = self._forward_scores(
                packed.input_ids,
                packed.position_ids,
                packed.attention_mask,
                cache,
                packed.score_rows,
                packed.score_cols,
                packed.score_targets,
            )
            totals.index_add_(0, packed.score_sequences, lp)
            misses.index_add_(0, packed.score_sequences, (~hit).long())
            if tracker is not None:
                tracker.done(packed.score_sequences.unique().tolist())

    def _score_plain(
        self,
        sequences: Sequence[ScoredSequence],
        seq_ids: list[int],
        totals: torch.Tensor,
        misses: torch.Tensor,
        tracker: _Progress | None,
    ) -> None:
        """Score each sequence on its own, left-truncated to the model's length, as lm-eval does."""
        windows: dict[int, list[int]] = {}
        for seq_id in seq_ids:
            seq = sequences[seq_id]
            scored = len(seq.tokens) - seq.context_len
            if scored > self._max_length:
                raise BackendError(
                    f"a continuation of {scored} tokens exceeds the model's length of {self._max_length}"
                )
            windows[seq_id] = list(seq.tokens[-(self._max_length + 1) :][:-1])
        order = sorted(seq_ids, key=lambda i: len(windows[i]), reverse=True)
        start = 0
        while start < len(order):
            longest = len(windows[order[start]])
            size = max(1, self._batch_tokens // longest)
            chunk = order[start : start + size]
            start += size
            input_ids = torch.full((len(chunk), longest), self._pad_id, dtype=torch.long)
            rows: list[int] = []
            cols: list[int] = []
            targets: list[int] = []
            for b, seq_id in enumerate(chunk):
                window = windows[seq_id]
                input_ids[b, : len(window)] = torch.tensor(window, dtype=torch.long)
                seq = sequences[seq_id]
                scored = len(seq.tokens) - seq.context_len
                # Right padding: the continuation's logits are the last `scored` of the window.
                rows.extend([b] * scored)
                cols.extend(range(len(window) - scored, len(window)))
                targets.extend(seq.tokens[-scored:])
            owners = torch.tensor([chunk[r] for r in rows], dtype=torch.long)
            lp, hit = self._forward_scores(
                input_ids.to(self._device),
                None,
                None,
                None,
                torch.tensor(rows, device=self._device),
                torch.tensor(cols, device=self._device),
                torch.tensor(targets, device=self._device),
            )
            totals.index_add_(0, owners, lp)
            misses.index_add_(0, owners, (~hit).long())
            if tracker is not None:
                tracker.done(chunk)

    def _forward_scores(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        cache: Any,
        rows: torch.Tensor,
        cols: torch.Tensor,
        targets: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass; the log-probability of each target and whether it is the argmax."""
        kwargs: dict[str, Any] = {"input_ids": input_ids, "use_cache": cache is not None}
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        if cache is not None:
            kwargs[self._cache_kwarg] = cache
        if self._logits_to_keep:
            # Project onto the vocabulary only where a score is read: for big vocabularies
            # the logits of every position would dominate memory.
            keep = torch.unique(cols)
            kwargs["logits_to_keep"] = keep
            cols = torch.searchsorted(keep, cols)
        self.tokens_run += input_ids.numel()
        logits = self._model(**kwargs).logits[rows, cols].float()
        logprobs = logits.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)
        hit = logits.argmax(dim=-1) == targets
        return logprobs.double().cpu(), hit.cpu()

    def _prefix_kv(self, prefix: tuple[int, ...]) -> KV:
        """Keys and values of ``prefix``, from the cache or extended from its longest cached start.

        Cached entries are never modified: slices are views, and extending
        builds new tensors.
        """
        best: tuple[int, ...] | None = None
        best_len = 0
        for key in self._prefix_cache:
            shared = common_prefix_length(key, prefix)
            if shared > best_len:
                best, best_len = key, shared
        if best is not None:
            self._prefix_cache.move_to_end(best)
            start = [(k[:, :, :best_len], v[:, :, :best_len]) for k, v in self._prefix_cache[best]]
            if best_len == len(prefix):
                return start
        kv = self._extend_kv(start if best is not None else None, prefix[best_len:], best_len)
        self._prefix_cache[prefix] = kv
        while len(self._prefix_cache) > _PREFIX_CACHE_ENTRIES:
            self._prefix_cache.popitem(last=False)
        return kv

    def _extend_kv(self, kv: KV | None, tokens: Sequence[int], start: int) -> KV:
        """Run ``tokens`` after the cached ``kv`` (``start`` tokens) in chunks and return the new cache."""
        from transformers import DynamicCache

        cache = _cache_from_kv(kv, 1) if kv is not None else DynamicCache()
        step = max(1, self._batch_tokens)
        with torch.inference_mode():
            for offset in range(0, len(tokens), step):
                chunk = torch.tensor([tokens[offset : offset + step]], dtype=torch.long, device=self._device)
                positions = torch.arange(start + offset, start + offset + chunk.shape[1], device=self._device)
                self.tokens_run += chunk.numel()
                self._model(
                    input_ids=chunk,
                    position_ids=positions[None],
                    use_cache=True,
                    **self._last_logits_only(),
                    **{self._cache_kwarg: cache},
                )
        return _kv_from_cache(cache)

    def _last_logits_only(self) -> dict[str, Any]:
        return {"logits_to_keep": 1} if self._logits_to_keep else {}

    def _check_packing(self) -> None:
        """Compare tree scoring with plain scoring on a tiny input; fall back if they disagree.

        Architectures that derive positions or biases from the attention mask
        rather than ``position_ids`` would silently give wrong scores when packed.
        """
        vocab = min(int(self._model.config.vocab_size), 64)
        ids = [(7 * i + 3) % vocab for i in range(20)]
        # Sibling branches of 6 tokens: a model that ignored position_ids would see the
        # second one 6 positions late, one that ignored the mask would see both.
        probe = [
            ScoredSequence(tuple(ids[:8] + ids[8:14]), 7),
            ScoredSequence(tuple(ids[:8] + ids[14:20]), 7),
            ScoredSequence(tuple(ids[:6] + ids[9:15]), 6),
        ]
        try:
            tree, _ = self._score(probe, packed=True)
            plain, _ = self._score(probe, packed=False)
        except Exception as exc:  # a model that rejects 4D masks or position_ids
            self._packed = False
            self._packing_note = f"disabled: this model rejects tree inputs ({one_line(exc)})"
            return
        finally:
            self._prefix_cache.clear()
        scored = torch.tensor([len(p.tokens) - p.context_len for p in probe], dtype=torch.float64)
        # Per-token log-probabilities: float noise is ~1e-6 in float32 and well under 0.1 in half
        # precision; a wrong position or mask moves them by whole nats.
        tolerance = 1e-3 if self._dtype == torch.float32 else 0.25
        if ((tree - plain).abs() / scored).max() > tolerance:
            self._packed = False
            self._packing_note = "disabled: tree scoring disagrees with plain scoring for this architecture"

    # ------------------------------------------------------------------ generation

    def _generation_batches(
        self, prompts: list[list[int]], requests: Sequence[GenerationRequest]
    ) -> list[list[int]]:
        """Request indices grouped by prompt length, each group within the token budget."""
        batches: list[list[int]] = []
        widest = 0
        for i in sorted(range(len(requests)), key=lambda i: len(prompts[i]), reverse=True):
            cost = len(prompts[i]) + max(requests[i].max_new_tokens, 0)
            if batches and (len(batches[-1]) + 1) * max(cost, widest) <= self._batch_tokens:
                batches[-1].append(i)
                widest = max(widest, cost)
            else:
                batches.append([i])
                widest = cost
        return batches

    def _generate_batch(
        self, prompts: list[list[int]], requests: list[GenerationRequest]
    ) -> list[GenerationResult]:
        """Greedy decoding of a batch, sharing one key/value cache.

        The token prefix common to all prompts (a few-shot prefix) comes from
        the prefix cache; the rest of each prompt is left-padded after it.
        Finished rows leave the batch.
        """
        from transformers import DynamicCache

        n = len(prompts)
        generated: list[list[int]] = [[] for _ in range(n)]
        texts = [""] * n
        active = [b for b in range(n) if requests[b].max_new_tokens > 0]
        live = [prompts[b] for b in active] or [[]]
        # Keep one token of every prompt to feed: its logits give the first new token.
        prefix_len = max(0, min(common_prefix_length(min(live), max(live)), min(map(len, live)) - 1))
        kv = self._prefix_kv(tuple(live[0][:prefix_len])) if prefix_len else None
        tails = [prompt[prefix_len:] for prompt in live]
        width = max(map(len, tails))
        input_ids = torch.full((len(tails), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(tails), prefix_len + width), dtype=torch.long)
        mask[:, :prefix_len] = 1
        for row, tail in enumerate(tails):
            input_ids[row, width - len(tail) :] = torch.tensor(tail, dtype=torch.long)
            mask[row, prefix_len + width - len(tail) :] = 1
        input_ids, mask = input_ids.to(self._device), mask.to(self._device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, prefix_len:]
        cache = _cache_from_kv(kv, len(tails)) if kv is not None else DynamicCache()
        generators = {
            b: _generator(requests[b].sampling, self._device)
            for b in active
            if not requests[b].sampling.greedy
        }
        with torch.inference_mode():
            while active:
                self.tokens_run += input_ids.numel()
                logits = self._model(
                    input_ids=input_ids,
                    attention_mask=mask,
                    position_ids=positions,
                    use_cache=True,
                    **self._last_logits_only(),
                    **{self._cache_kwarg: cache},
                ).logits
                next_ids = logits[:, -1].argmax(dim=-1)
                for row, b in enumerate(active):
                    if b in generators:
                        next_ids[row] = _sample(logits[row, -1], requests[b].sampling, generators[b])
                keep: list[int] = []
                for row, token in enumerate(next_ids.tolist()):
                    b = active[row]
                    generated[b].append(token)
                    texts[b] = self._tokenizer.decode(generated[b], skip_special_tokens=True)
                    finished = (
                        token == self._eos_id
                        or len(generated[b]) >= requests[b].max_new_tokens
                        or any(s and s in texts[b] for s in requests[b].stop)
                    )
                    if not finished:
                        keep.append(row)
                if len(keep) < len(active):
                    if not keep:
                        break
                    rows = torch.tensor(keep, device=self._device)
                    cache.batch_select_indices(rows)
                    next_ids, mask, positions = next_ids[rows], mask[rows], positions[rows]
                    active = [active[row] for row in keep]
                input_ids = next_ids[:, None]
                mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
                positions = positions[:, -1:] + 1
        return [
            GenerationResult(
                text=cut_at_stop(texts[b], requests[b].stop),
                prompt_tokens=len(prompts[b]),
                completion_tokens=len(generated[b]),
            )
            for b in range(n)
        ]

    @contextlib.contextmanager
    def _inference_errors(self) -> Iterator[None]:
        """Report torch failures (out of memory, device errors) as :class:`BackendError`."""
        try:
            with transformers_silenced():
                yield
        except RuntimeError as exc:  # torch.OutOfMemoryError is one
            if self._device.type == "cuda":
                torch.cuda.empty_cache()
            raise BackendError(f"inference on {self._base} failed: {one_line(exc)}") from exc

    def _require_model(self) -> None:
        if self._model is None:
            raise BackendError("the hf backend was closed")


class _Progress:
    """Report requests as their last sequence is scored."""

    def __init__(self, owners: list[int], n_requests: int, callback: ProgressCallback | None) -> None:
        self._owners = owners
        self._callback = callback
        self._left = [0] * n_requests
        for owner in owners:
            self._left[owner] += 1
        # Requests with nothing to score (no or only empty continuations) are done already.
        self._pending = sum(1 for left in self._left if left == 0)

    def done(self, seq_ids: Sequence[int]) -> None:
        finished = self._pending
        self._pending = 0
        for seq_id in seq_ids:
            owner = self._owners[seq_id]
            self._left[owner] -= 1
            if self._left[owner] == 0:
                finished += 1
        if finished and self._callback is not None:
            self._callback(finished)


# ---------------------------------------------------------------------- helpers


def _max_length(config: Any, tokenizer: Any) -> int:
    """The context length lm-eval's HFLM uses: config, then tokenizer, then 2048."""
    text_config = getattr(config, "text_config", None) or config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(text_config, attr, None)
        if value is not None:
            return int(value)
    limit = getattr(tokenizer, "model_max_length", None)
    if limit is not None and limit != _TOKENIZER_INFINITY:
        return int(limit)
    return _DEFAULT_MAX_LENGTH


def _default_batch_tokens(device: torch.device, config: Any, tokenizer: Any) -> int:
    """Token positions of one forward pass when the caller names none.

    On CPU, few large passes beat many small ones: every operation ends at a
    barrier of the thread pool, and on a busy machine each barrier waits for a
    descheduled thread (measured with 2 threads beside one other busy process:
    2048-token passes took 2x as long as 8192-token ones and often much more,
    and as long on an idle machine).  A pass holds the float32 logits of each scored position and
    every layer's keys and values, so only models small enough to keep that
    under ~512 MiB get more than 2048 positions; GPT-2 small already does not.
    """
    if device.type == "cuda":
        return 16384
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    vocab = int(getattr(text_config, "vocab_size", None) or len(tokenizer))
    layers = int(getattr(text_config, "num_hidden_layers", None) or getattr(text_config, "n_layer", 0) or 0)
    hidden = int(getattr(text_config, "hidden_size", None) or getattr(text_config, "n_embd", 0) or 0)
    if not layers or not hidden:
        return _MIN_CPU_BATCH_TOKENS
    per_position = 4 * vocab + 2 * layers * hidden * 4
    return max(_MIN_CPU_BATCH_TOKENS, min(_MAX_CPU_BATCH_TOKENS, _CPU_PASS_BYTES // per_position))


def _template_facts(template: ChatTemplate | None) -> dict[str, Any] | None:
    if template is None:
        return None
    return {"sha256": template.sha256, "system_role": template.system_role, "source": template.source}


def _generator(sampling: Sampling, device: torch.device) -> torch.Generator:
    """A generator of its own for one sampled request: seeded, it draws the same tokens in any batch."""
    generator = torch.Generator(device=device)
    if sampling.seed is not None:
        generator.manual_seed(sampling.seed)
    else:
        generator.seed()
    return generator


def _sample(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> torch.Tensor:
    """One token drawn from ``logits`` (a row) with temperature, then top-k, then top-p (nucleus) filtering."""
    scores = logits.float() / sampling.temperature
    if 0 < sampling.top_k < scores.numel():
        kth = torch.topk(scores, sampling.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, -math.inf)
    if sampling.top_p < 1.0:
        ordered, order = torch.sort(scores, descending=True)
        cumulative = torch.softmax(ordered, dim=-1).cumsum(dim=-1)
        # Keep the smallest set whose mass reaches top_p (the most likely token always stays).
        drop = cumulative - torch.softmax(ordered, dim=-1) >= sampling.top_p
        scores = scores.scatter(0, order[drop], -math.inf)
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[0]


def _cache_from_kv(kv: KV, batch: int) -> Any:
    """A fresh DynamicCache holding ``kv`` repeated ``batch`` times; ``kv`` itself is not modified."""
    from transformers import DynamicCache

    if batch > 1:
        kv = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in kv]
    if hasattr(DynamicCache, "from_legacy_cache"):  # transformers 4.x
        return DynamicCache.from_legacy_cache(tuple(kv))
    return DynamicCache(kv)


def _kv_from_cache(cache: Any) -> KV:
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return [(layer.keys, layer.values) for layer in layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _local_source(spec: str, what: str, marker: str) -> Path | None:
    """The folder ``spec`` names, checked to contain ``marker``; None for a hub id."""
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{what} {spec} is not a folder")
        if not (path / marker).is_file():
            kind = "a LoRA adapter" if what == "adapter" else f"a {what}"
            raise ModelLoadError(f"{what} {spec} is not {kind} folder: it has no {marker}")
        return path.resolve()
    if _HUB_ID.fullmatch(spec) and not spec.startswith("."):
        return None
    raise ModelLoadError(f"{what} {spec} does not exist")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence library warnings while loading (deprecation notices we cannot act on), and
    transformers' own chatter (progress bars, notices logged once)."""
    with warnings.catch_warnings(), transformers_silenced():
        warnings.simplefilter("ignore")
        yield


def _load_base(base: str, revision: str | None, dtype: torch.dtype) -> tuple[Any, Any]:
    """Config, tokenizer and model of ``base``, with an attention implementation that honours custom masks."""
    kwargs: dict[str, Any] = {"revision": revision} if revision else {}
    # The config, tokenizer and model classes import their modules lazily.
    with long_lived_imports(), _quiet():
        import transformers
        from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoConfig, AutoModelForCausalLM, AutoTokenizer

        try:
            config = AutoConfig.from_pretrained(base, **kwargs)
        except Exception as exc:
            raise ModelLoadError(f"cannot load the config of base model {base}: {one_line(exc)}") from exc
        try:
            tokenizer = AutoTokenizer.from_pretrained(base, **kwargs)
        except Exception as exc:
            raise ModelLoadError(f"cannot load the tokenizer of base model {base}: {one_line(exc)}") from exc
        # Remote-code and unknown architectures are imported while loading instead.
        with contextlib.suppress(Exception):
            MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    with _quiet():
        dtype_kwarg = "dtype" if _at_least(transformers.__version__, (4, 56)) else "torch_dtype"
        # sdpa and eager take our additive 4D masks; flash attention would ignore them.
        for implementation in ("sdpa", "eager"):
            try:
                model = AutoModelForCausalLM.from_pretrained(
                    base, config=config, attn_implementation=implementation, **{dtype_kwarg: dtype}, **kwargs
                )
                break
            except ValueError as exc:
                if implementation == "sdpa" and "sdpa" in str(exc).lower():
                    continue
                raise ModelLoadError(f"cannot load base model {base}: {one_line(exc)}") from exc
            except Exception as exc:
                raise ModelLoadError(f"cannot load base model {base}: {one_line(exc)}") from exc
    return model, tokenizer


def _fuse_gelu(model: Any) -> int:
    """Replace transformers' ``gelu_new`` modules (GPT-2 and kin) by the same function in one kernel.

    ``NewGELUActivation`` computes the tanh approximation of GELU in five
    elementwise passes; ``GELUTanh`` is torch's fused kernel for the same
    formula, equal up to float rounding (~1e-7), and takes a quarter of the
    CPU time of a small model's forward pass off.  Returns how many were replaced.
    """
    from transformers import activations

    fused = getattr(activations, "GELUTanh", None) or getattr(activations, "PytorchGELUTanh", None)
    original = getattr(activations, "NewGELUActivation", None)
    if fused is None or original is None:
        return 0
    replaced = 0
    for module in model.modules():
        for name, child in list(module.named_children()):
            if type(child) is original:
                setattr(module, name, fused())
                replaced += 1
    return replaced


def _at_least(version: str, minimum: tuple[int, int]) -> bool:
    numbers = [int(part) for part in re.findall(r"\d+", version)[:2]]
    return tuple(numbers) >= minimum


def _attach_adapter(model: Any, tokenizer: Any, adapter: str, base: str, revision: str | None) -> Any:
    """Wrap ``model`` in a PeftModel with the weights of ``adapter``, checking every key and shape.

    peft itself only warns about missing keys, so an adapter trained for a
    different base could silently leave layers un-adapted.
    """
    from peft import (
        PeftConfig,
        PeftModel,
        get_peft_model_state_dict,
        load_peft_weights,
        set_peft_model_state_dict,
    )

    kwargs: dict[str, Any] = {"revision": revision} if revision else {}
    with _quiet():
        try:
            config = PeftConfig.from_pretrained(adapter, **kwargs)
        except Exception as exc:
            raise ModelLoadError(f"cannot read the adapter config of {adapter}: {one_line(exc)}") from exc
        config.inference_mode = True
        # As lm-eval does: an adapter trained with added tokens needs the tokenizer's vocabulary.
        if getattr(model.config, "vocab_size", len(tokenizer)) != len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
        base_shapes = {f"base_model.model.{name}": tuple(p.shape) for name, p in model.named_parameters()}
        try:
            peft_model = PeftModel(model, config)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise AdapterMismatchError(
                f"adapter {adapter} does not fit base {base}: {one_line(exc)}"
            ) from exc
        try:
            weights = load_peft_weights(adapter, device="cpu", **kwargs)
        except Exception as exc:
            raise ModelLoadError(f"cannot read the adapter weights of {adapter}: {one_line(exc)}") from exc
        expected = {
            k: tuple(v.shape)
            for k, v in get_peft_model_state_dict(peft_model, save_embedding_layers=False).items()
        }
        problem = _adapter_problem(expected, {k: tuple(v.shape) for k, v in weights.items()}, base_shapes)
        if problem:
            raise AdapterMismatchError(f"adapter {adapter} does not fit base {base}: {problem}")
        try:
            set_peft_model_state_dict(peft_model, weights)
        except Exception as exc:
            raise AdapterMismatchError(
                f"adapter {adapter} does not fit base {base}: {one_line(exc)}"
            ) from exc
    return peft_model


def _adapter_problem(
    expected: dict[str, tuple[int, ...]],
    found: dict[str, tuple[int, ...]],
    base_shapes: dict[str, tuple[int, ...]],
) -> str:
    """What is wrong with an adapter's weights, in one line; empty when they fit."""
    for key, shape in expected.items():
        if key in found and found[key] != shape:
            return f"{_describe_key(key)} expects shape {shape}, adapter has {found[key]}"
    missing = sorted(k for k in expected if k not in found)
    if missing:
        return f"the adapter has no weights for {_list_keys(missing)}, which the base has"
    # Saved embedding layers (added tokens) are base parameters of the same shape: fine.
    unexpected = sorted(k for k in found if k not in expected and base_shapes.get(k) != found[k])
    if unexpected:
        return f"the adapter has weights for {_list_keys(unexpected)}, which the base lacks"
    return ""


def _describe_key(key: str) -> str:
    """``base_model.model.a.b.lora_A.weight`` -> ``lora_A of a.b``."""
    parts = key.removeprefix("base_model.model.").split(".")
    for i, part in enumerate(parts):
        if part.startswith("lora_") and i > 0:
            return f"{part} of {'.'.join(parts[:i])}"
    return ".".join(parts)


def _list_keys(keys: list[str], limit: int = 3) -> str:
    names = list(dict.fromkeys(_describe_key(k) for k in keys))
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"
