"""What every synthetic task shares: batches of ``(inputs, labels)`` from a seed.

``labels[b, t]`` is the token the model must predict after reading ``inputs[b, t]``, or
``IGNORE`` (-100) where nothing is asked.  Generation is vectorized (no per-example loop),
deterministic in the seed, and train / test streams come from disjoint seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100
# Train batches are generated from even seeds, test sets from odd ones: the streams never meet.
STEPS_PER_SEED = 10**9


@dataclass
class Batch:
    inputs: torch.Tensor  # (B, L) int64
    labels: torch.Tensor  # (B, L) int64, IGNORE where nothing is asked


class Task:
    vocab_size: int
    seq_len: int

    def generate(self, num_examples: int, seed: int) -> Batch:
        raise NotImplementedError

    def train_batch(self, batch_size: int, step: int, seed: int = 0) -> Batch:
        """The training batch of ``step``: a fresh sample, reproducible from ``(seed, step)``."""
        if seed < 0 or not 0 <= step < STEPS_PER_SEED:
            raise ValueError(f"need seed >= 0 and 0 <= step < {STEPS_PER_SEED}, got seed={seed}, step={step}")
        return self.generate(batch_size, 2 * (seed * STEPS_PER_SEED + step))

    def test_set(self, num_examples: int, seed: int = 0) -> Batch:
        """A fixed held-out set, from seeds no training batch uses."""
        if seed < 0:
            raise ValueError(f"need seed >= 0, got {seed}")
        return self.generate(num_examples, 2 * seed + 1)

    @property
    def context_end(self) -> int | None:
        """Index at which the information to remember has all been read (for ESS/kv), if any."""
        return None

    @property
    def items_to_recall(self) -> int | None:
        """How many items the task asks the model to hold at ``context_end`` (kv pairs)."""
        return None


def check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def distinct_samples(num_examples: int, low: int, high: int, k: int, g: torch.Generator) -> torch.Tensor:
    """``k`` distinct integers from ``[low, high)`` per row: ``(num_examples, k)``."""
    return torch.rand(num_examples, high - low, generator=g).argsort(dim=1)[:, :k] + low
