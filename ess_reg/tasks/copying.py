"""Selective copying and compression (after the MAD synthetic tasks), as next-token prediction.

* ``SelectiveCopy``: ``num_tokens`` data tokens sit at random positions of a context of
  ``seq_len - num_tokens - 1`` noise tokens (token 0); a separator (token 1) follows, and the
  model must then produce the data tokens in order (teacher-forced after the separator).
* ``Compression``: ``seq_len // 2 - 1`` random tokens, a separator, then the same tokens again
  (and one noise token): the whole prefix must be held in the state and reproduced.

Data tokens are ``2 .. vocab_size - 1``.  ``context_end`` is the separator's index.
"""

from __future__ import annotations

import torch

from .base import IGNORE, Batch, Task, check_int, generator

NOISE, SEPARATOR, FIRST_DATA_TOKEN = 0, 1, 2


def _recall_labels(inputs: torch.Tensor, start: int, count: int) -> torch.Tensor:
    """Labels asking for the ``count`` tokens after ``start``, each read at the position before it."""
    labels = torch.full_like(inputs, IGNORE)
    labels[:, start : start + count] = inputs[:, start + 1 : start + 1 + count]
    return labels


class _CopyTask(Task):
    """What both tasks share: every answer is a data token, drawn uniformly."""

    vocab_size: int

    @property
    def chance_accuracy(self) -> float:
        return 1 / (self.vocab_size - FIRST_DATA_TOKEN)


class SelectiveCopy(_CopyTask):
    def __init__(self, vocab_size: int = 16, seq_len: int = 64, num_tokens: int = 8):
        check_int("vocab_size", vocab_size, FIRST_DATA_TOKEN + 1)
        check_int("num_tokens", num_tokens, 1)
        check_int("seq_len", seq_len, 2)
        if seq_len < 2 * num_tokens + 1:
            raise ValueError(f"seq_len={seq_len} cannot hold {num_tokens} data tokens, a separator and their copy "
                             f"(needs >= {2 * num_tokens + 1})")
        self.vocab_size, self.seq_len, self.num_tokens = vocab_size, seq_len, num_tokens

    @property
    def context_end(self) -> int:
        return self.seq_len - self.num_tokens - 1

    @property
    def items_to_recall(self) -> int:
        return self.num_tokens

    def generate(self, num_examples: int, seed: int) -> Batch:
        check_int("num_examples", num_examples, 1)
        g = generator(seed)
        n, k, context = num_examples, self.num_tokens, self.context_end
        data = torch.randint(FIRST_DATA_TOKEN, self.vocab_size, (n, k), generator=g)
        positions = torch.rand(n, context, generator=g).argsort(dim=1)[:, :k].sort(dim=1).values
        inputs = torch.full((n, self.seq_len), NOISE, dtype=torch.long)
        rows = torch.arange(n).unsqueeze(1)
        inputs[rows, positions] = data
        inputs[:, context] = SEPARATOR
        inputs[:, context + 1 :] = data
        return Batch(inputs, _recall_labels(inputs, context, k))


class Compression(_CopyTask):
    def __init__(self, vocab_size: int = 16, seq_len: int = 32):
        check_int("vocab_size", vocab_size, FIRST_DATA_TOKEN + 1)
        check_int("seq_len", seq_len, 4)
        if seq_len % 2:
            raise ValueError(f"seq_len must be even (prefix, separator, copy), got {seq_len}")
        self.vocab_size, self.seq_len = vocab_size, seq_len

    @property
    def context_end(self) -> int:
        return self.seq_len // 2 - 1

    @property
    def items_to_recall(self) -> int:
        return self.context_end

    def generate(self, num_examples: int, seed: int) -> Batch:
        check_int("num_examples", num_examples, 1)
        g = generator(seed)
        k = self.context_end
        prefix = torch.randint(FIRST_DATA_TOKEN, self.vocab_size, (num_examples, k), generator=g)
        separator = torch.full((num_examples, 1), SEPARATOR, dtype=torch.long)
        pad = torch.full((num_examples, self.seq_len - 2 * k - 1), NOISE, dtype=torch.long)
        inputs = torch.cat([prefix, separator, prefix, pad], dim=1)
        return Batch(inputs, _recall_labels(inputs, k, k))
