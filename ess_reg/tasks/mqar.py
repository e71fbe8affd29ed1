"""Multi-query associative recall (MQAR), with the semantics of zoology's ``multiquery_ar``.

Keys come from the first half of the vocabulary (``1 .. V/2 - 1``, distinct within a sequence),
values from the second half.  The context ``k1 v1 k2 v2 ...`` fills the first ``2 * kv``
positions; then every key is asked once, at an even offset of the query region drawn from a
power law (``p(gap) ~ gap^(power_a - 1)``: small ``power_a`` favours short gaps), and the label
at a query position is its value.  Other query-region positions are 0, or random tokens with
``random_non_queries``.  Example (V=12, L=16, kv=2, no random fill)::

    inputs: 2  8  4  7  0  0  4  0  0  0  0  0  2  0  0  0
    labels: .  .  .  .  .  .  7  .  .  .  .  .  8  .  .  .
"""

from __future__ import annotations

import torch

from .._checks import check_number
from .base import IGNORE, Batch, Task, check_int, distinct_samples, generator


class MQAR(Task):
    def __init__(self, vocab_size: int = 8192, seq_len: int = 64, num_kv_pairs: int = 8,
                 power_a: float = 0.01, random_non_queries: bool = True):
        check_int("vocab_size", vocab_size, 4)
        check_int("seq_len", seq_len, 4)
        check_int("num_kv_pairs", num_kv_pairs, 1)
        if seq_len % 2:
            raise ValueError(f"seq_len must be even (queries sit at even offsets), got {seq_len}")
        if 4 * num_kv_pairs > seq_len:
            raise ValueError(
                f"num_kv_pairs={num_kv_pairs} needs seq_len >= 4 * num_kv_pairs = {4 * num_kv_pairs} "
                f"(context and queries), got {seq_len}"
            )
        if vocab_size // 2 - 1 < num_kv_pairs:
            raise ValueError(f"vocab_size={vocab_size} has {vocab_size // 2 - 1} keys, "
                             f"fewer than num_kv_pairs={num_kv_pairs}")
        if vocab_size <= seq_len:
            raise ValueError(f"vocab_size must exceed seq_len (as in zoology), got {vocab_size} <= {seq_len}")
        check_number("power_a", power_a, minimum=0, strict=True)
        if not 0 < power_a <= 1:
            raise ValueError(f"power_a must be in (0, 1], got {power_a}")
        self.vocab_size, self.seq_len, self.num_kv_pairs = vocab_size, seq_len, num_kv_pairs
        self.power_a, self.random_non_queries = power_a, random_non_queries

    @property
    def context_end(self) -> int:
        return 2 * self.num_kv_pairs

    @property
    def items_to_recall(self) -> int:
        return self.num_kv_pairs

    @property
    def chance_accuracy(self) -> float:
        return 1 / (self.vocab_size - self.vocab_size // 2)  # a value: a token of the second half

    def generate(self, num_examples: int, seed: int) -> Batch:
        check_int("num_examples", num_examples, 1)
        g = generator(seed)
        n, kv, L, V = num_examples, self.num_kv_pairs, self.seq_len, self.vocab_size
        keys = distinct_samples(n, 1, V // 2, kv, g)
        values = distinct_samples(n, V // 2, V, kv, g)
        context = torch.stack([keys, values], dim=-1).reshape(n, 2 * kv)

        space = (L - 2 * kv) // 2  # query slots: even offsets of the query region
        gap = torch.arange(1, space + 1, dtype=torch.float64)
        weights = (self.power_a * gap ** (self.power_a - 1)).expand(n, space)
        slots = torch.multinomial(weights, kv, replacement=False, generator=g)  # distinct per row
        query_pos = 2 * kv + 2 * slots

        inputs = torch.zeros(n, L, dtype=torch.long)
        inputs[:, : 2 * kv] = context
        rows = torch.arange(n).unsqueeze(1)
        if self.random_non_queries:
            fill = torch.randint(0, V, (n, L - 2 * kv), generator=g)
            inputs[:, 2 * kv :] = fill
        inputs[rows, query_pos] = keys
        labels = torch.full((n, L), IGNORE, dtype=torch.long)
        labels[rows, query_pos] = values
        return Batch(inputs, labels)
