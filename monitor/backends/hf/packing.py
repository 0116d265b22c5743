"""Token trees: score many continuations of many contexts in few forward passes.

Multiple-choice scoring asks for ``log P(continuation | context)`` for every
choice of every item, and a few-shot eval set repeats the same long prefix in
every item.  Run naively (as lm-evaluation-harness does), a 5-shot 5-choice set
costs ~20x its unique tokens.  This module lays the work out so that every
unique token is computed once:

* the token-level prefix common to every sequence of a call is run once and its
  key/value cache reused (the caller owns that cache);
* the rest of each item, its context tail and all of its continuations, becomes
  a *trie* of tokens.  Laid out in preorder, node ``i`` may attend to node ``j``
  exactly when ``j`` is an ancestor of ``i`` (or ``i`` itself), which in preorder
  means ``j <= i < end[j]`` with ``end[j]`` the end of ``j``'s subtree.  Each node
  sits at position ``prefix_len + depth``, so the model sees every root-to-leaf
  path as if it were an ordinary sequence;
* several tries are packed into one row and rows are batched; since a subtree
  never spans two items, the same ``j <= i < end[j]`` rule keeps items apart.

Everything here is pure Python and torch: no model, no tokenizer.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class ScoredSequence:
    """One context + continuation, as token ids, to be scored token by token.

    ``tokens`` is the whole sequence (context then continuation); the last
    ``len(tokens) - context_len`` tokens are scored.
    """

    tokens: tuple[int, ...]
    context_len: int


@dataclass
class TokenTree:
    """The trie of one item's sequences after the shared prefix, in preorder.

    Only tokens whose next-token distribution is needed are nodes: the last
    token of a sequence is a target, never an input (as in lm-eval, which feeds
    ``(context + continuation)[:-1]``).
    """

    tokens: list[int] = field(default_factory=list)
    #: Position of each node in its sequence (the shared prefix occupies 0..prefix_len-1).
    positions: list[int] = field(default_factory=list)
    #: Preorder index one past the last node of each node's subtree (local to this tree).
    ends: list[int] = field(default_factory=list)
    #: For every scored token: the node whose logits predict it, the target id, its sequence.
    score_nodes: list[int] = field(default_factory=list)
    score_targets: list[int] = field(default_factory=list)
    score_sequences: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens)


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """The number of leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def shared_prefix_length(sequences: Sequence[ScoredSequence]) -> int:
    """Length of the token prefix shared by all sequences that can go in the KV cache.

    The common prefix of a set of sequences is the common prefix of its
    lexicographic minimum and maximum, found with C-speed tuple comparisons.
    It is capped one token short of the shortest context: the logits of the
    last context token are needed, and the cache holds keys and values only.
    """
    if not sequences:
        return 0
    first = min(s.tokens for s in sequences)
    last = max(s.tokens for s in sequences)
    cap = min(s.context_len for s in sequences) - 1
    return max(0, min(common_prefix_length(first, last), cap))


def build_tree(sequences: Sequence[tuple[int, ScoredSequence]], prefix_len: int) -> TokenTree:
    """Merge the sequences of one item into a trie, laid out in preorder.

    ``sequences`` pairs each sequence with the id its scores are reported
    under.  Sorting the inputs (each sequence without its last token, after the
    shared prefix) lexicographically visits the trie in preorder, and the common
    prefix of neighbours tells how many nodes they share.
    """
    tree = TokenTree()
    fed = sorted(
        ((seq.tokens[prefix_len:-1], seq_id, seq) for seq_id, seq in sequences),
        key=lambda x: x[0],
    )
    path: list[int] = []  # node indices from the root to the current node
    previous: tuple[int, ...] = ()
    for inputs, seq_id, seq in fed:
        shared = common_prefix_length(previous, inputs)
        del path[shared:]
        for depth in range(shared, len(inputs)):
            path.append(len(tree.tokens))
            tree.tokens.append(inputs[depth])
            tree.positions.append(prefix_len + depth)
        previous = inputs
        # The node at sequence position p predicts token p + 1.
        first_scored = seq.context_len - 1 - prefix_len
        for offset in range(first_scored, len(inputs)):
            tree.score_nodes.append(path[offset])
            tree.score_targets.append(seq.tokens[prefix_len + offset + 1])
            tree.score_sequences.append(seq_id)
    tree.ends = _subtree_ends(tree.positions)
    return tree


def _subtree_ends(depths: Sequence[int]) -> list[int]:
    """For each preorder node, the index after its subtree: the next node no deeper than it."""
    ends = [len(depths)] * len(depths)
    open_nodes: list[int] = []
    for i, depth in enumerate(depths):
        while open_nodes and depths[open_nodes[-1]] >= depth:
            ends[open_nodes.pop()] = i
        open_nodes.append(i)
    return ends


@dataclass
class PackedRow:
    """Several trees side by side in one sequence of the batch."""

    trees: list[TokenTree] = field(default_factory=list)
    length: int = 0


def pack_rows(trees: Sequence[TokenTree], row_tokens: int) -> list[PackedRow]:
    """Pack trees into rows of at most ``row_tokens`` nodes, of nearly equal length.

    Rows in a batch are padded to the longest, so the trees (largest first) go
    to the currently shortest of ``ceil(total / row_tokens)`` rows, opening a
    new row only when one would overflow.  A tree longer than ``row_tokens``
    gets a row of its own.  Attention inside a row costs its length squared,
    so rows stay short and are batched instead.
    """
    total = sum(len(t) for t in trees)
    rows = [PackedRow() for _ in range(max(1, -(-total // row_tokens)))]
    shortest = [(0, i) for i in range(len(rows))]  # heap of (length, row index)
    for tree in sorted(trees, key=len, reverse=True):
        length, i = heapq.heappop(shortest)
        if length and length + len(tree) > row_tokens:
            heapq.heappush(shortest, (length, i))
            i = len(rows)
            rows.append(PackedRow())
        row = rows[i]
        row.trees.append(tree)
        row.length += len(tree)
        heapq.heappush(shortest, (row.length, i))
    return [row for row in rows if row.trees]


def batch_rows(rows: Sequence[PackedRow], batch_tokens: int, prefix_len: int = 0) -> list[list[PackedRow]]:
    """Group rows of similar length so that each batch holds at most ``batch_tokens`` positions.

    Every row carries its own copy of the shared prefix's keys and values, so
    a row costs ``prefix_len + length`` positions; a batch always takes at
    least one row.
    """
    batches: list[list[PackedRow]] = []
    current: list[PackedRow] = []
    for row in sorted(rows, key=lambda r: r.length, reverse=True):
        longest = current[0].length if current else row.length
        if current and (len(current) + 1) * (prefix_len + longest) > batch_tokens:
            batches.append(current)
            current = []
        current.append(row)
    if current:
        batches.append(current)
    return batches


@dataclass
class PackedBatch:
    """Model inputs for a batch of packed rows, and where to read each score."""

    input_ids: torch.Tensor  # (B, L)
    position_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, 1, L, prefix_len + L), additive
    #: For every scored token: its row, its column in the row, its target, its sequence id.
    score_rows: torch.Tensor
    score_cols: torch.Tensor
    score_targets: torch.Tensor
    score_sequences: torch.Tensor


def make_batch(
    rows: Sequence[PackedRow],
    *,
    prefix_len: int,
    pad_id: int,
    dtype: torch.dtype,
    device: torch.device,
) -> PackedBatch:
    """Lay rows out as tensors and build the tree attention mask with torch ops, on ``device``."""
    length = max(r.length for r in rows)
    tokens: list[int] = []
    positions: list[int] = []
    ends: list[int] = []
    s_rows: list[int] = []
    s_cols: list[int] = []
    s_targets: list[int] = []
    s_seqs: list[int] = []
    for b, row in enumerate(rows):
        offset = 0
        for tree in row.trees:
            tokens += tree.tokens
            positions += tree.positions
            ends += [end + offset for end in tree.ends]
            s_rows += [b] * len(tree.score_nodes)
            s_cols += [node + offset for node in tree.score_nodes]
            s_targets += tree.score_targets
            s_seqs += tree.score_sequences
            offset += len(tree)
        # Padding attends to itself only (end = index + 1), so no query row is fully masked.
        padding = length - offset
        tokens += [pad_id] * padding
        positions += [0] * padding
        ends += range(offset + 1, length + 1)
    shape = (len(rows), length)
    ends_t = torch.tensor(ends, dtype=torch.long, device=device).view(shape)
    index = torch.arange(length, device=device)
    # allowed[b, i, j]: j is i or an ancestor of i, i.e. j <= i < end[j].
    allowed = (index[None, None, :] <= index[None, :, None]) & (index[None, :, None] < ends_t[:, None, :])
    # Every node also sees the whole shared prefix.
    mask = torch.zeros((len(rows), 1, length, prefix_len + length), dtype=dtype, device=device)
    mask[:, 0, :, prefix_len:].masked_fill_(~allowed, torch.finfo(dtype).min)
    return PackedBatch(
        input_ids=torch.tensor(tokens, dtype=torch.long, device=device).view(shape),
        position_ids=torch.tensor(positions, dtype=torch.long, device=device).view(shape),
        attention_mask=mask,
        score_rows=torch.tensor(s_rows, dtype=torch.long, device=device),
        score_cols=torch.tensor(s_cols, dtype=torch.long, device=device),
        score_targets=torch.tensor(s_targets, dtype=torch.long, device=device),
        score_sequences=torch.tensor(s_seqs, dtype=torch.long),
    )
