"""What every synthetic task shares: batches of ``(inputs, labels)`` from a seed.

``labels[b, t]`` is the token the model must predict after reading ``inputs[b, t]``, or
``IGNORE`` (-100) where nothing is asked.  Generation is vectorized (no per-example loop),
deterministic in the seed, and train / test streams come from disjoint seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import MAX_SEED, check_int, check_seed

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
        check_int("batch_size", batch_size, 1)
        check_int("seed", seed)
        check_int("step", step)
        if seed < 0 or not 0 <= step < STEPS_PER_SEED:
            raise ValueError(f"need seed >= 0 and 0 <= step < {STEPS_PER_SEED}, got seed={seed}, step={step}")
        check_seed("seed", seed, (MAX_SEED // 2) // STEPS_PER_SEED - 1)  # the batch's own seed stays in range
        return self.generate(batch_size, 2 * (seed * STEPS_PER_SEED + step))

    def test_set(self, num_examples: int, seed: int = 0) -> Batch:
        """A fixed held-out set, from seeds no training batch uses."""
        check_int("num_examples", num_examples, 1)
        check_seed("seed", seed, (MAX_SEED - 1) // 2)
        return self.generate(num_examples, 2 * seed + 1)

    @property
    def context_end(self) -> int | None:
        """Index at which the information to remember has all been read (for ESS/kv), if any."""
        return None

    @property
    def items_to_recall(self) -> int | None:
        """How many items the task asks the model to hold at ``context_end`` (kv pairs)."""
        return None

    @property
    def chance_accuracy(self) -> float | None:
        """The accuracy of guessing uniformly among the tokens an answer can be (drawn on plots
        of accuracy, so that "at chance" can be seen); None where the task does not say."""
        return None


def generator(seed: int) -> torch.Generator:
    """The generator of one batch; ``seed`` must be an int >= 0 (a float seed is refused, not truncated)."""
    return torch.Generator().manual_seed(check_seed("seed", seed))


def distinct_samples(num_examples: int, low: int, high: int, k: int, g: torch.Generator) -> torch.Tensor:
    """``k`` distinct integers from ``[low, high)`` per row: ``(num_examples, k)``."""
    return torch.rand(num_examples, high - low, generator=g).argsort(dim=1)[:, :k] + low
