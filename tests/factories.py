"""Builders for the tests: operators of known structure, small language models, token batches.

Plain functions rather than fixtures: each takes the arguments a test varies (shape, decay
regime, seed...), and a test may call one several times.  The fixtures (the MLflow store) are
in ``tests/conftest.py``.
"""

import torch

from ess_reg import StateSpaceOperator
from ess_reg.models.lm import LanguageModel

DECAY_REGIMES = {
    # per-step log-decays drawn in these ranges (log-uniform between the ends)
    "moderate": (-1.0, -0.01),
    "strong": (-20.0, -5.0),
    "near_unit": (-1e-4, -1e-6),
    "mixed": (-20.0, -1e-4),
}

# Small settings of the mixers `lm` builds: cheap enough for a test to train a few dozen steps.
SMALL_MIXERS = {"gla": {"num_heads": 2, "feature_dim": 8}, "s6": {"d_state": 8}, "sa": {"num_heads": 2}}


def random_state_space(batch_shape, length, state, regime="moderate", seed=0, dtype=torch.float64, multiplicity=1):
    g = torch.Generator().manual_seed(seed)
    lo, hi = DECAY_REGIMES[regime]
    u = torch.rand(*batch_shape, length, state, generator=g, dtype=dtype)
    log_decay = -torch.exp(torch.log(torch.tensor(-lo, dtype=dtype)) * u
                           + torch.log(torch.tensor(-hi, dtype=dtype)) * (1 - u))
    B = torch.randn(*batch_shape, length, state, generator=g, dtype=dtype)
    C = torch.randn(*batch_shape, length, state, generator=g, dtype=dtype)
    return StateSpaceOperator(log_decay, B, C, multiplicity=multiplicity)


def random_causal(*shape, seed=0, dtype=torch.float64):
    """A dense causal ``T`` of ``shape`` (``(..., L, L)``): standard normal entries on and below
    the diagonal, zeros above."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype).tril()


def lm(mixer, seed=0, *, vocab_size=32, d_model=16, n_layers=2, **mixer_kwargs):
    """A small LanguageModel with ``mixer`` (``SMALL_MIXERS`` settings, updated by ``mixer_kwargs``),
    its parameters drawn after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return LanguageModel(vocab_size, d_model, n_layers, mixer, {**SMALL_MIXERS[mixer], **mixer_kwargs})


def tokens(seed=1, batch=4, length=24, vocab_size=32):
    """A ``(batch, length)`` batch of token ids in ``0..vocab_size-1``, the same for the same seed."""
    return torch.randint(0, vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))
