"""Operators of known structure for the tests."""

import torch

from ess_reg import StateSpaceOperator

DECAY_REGIMES = {
    # per-step log-decays drawn in these ranges (log-uniform between the ends)
    "moderate": (-1.0, -0.01),
    "strong": (-20.0, -5.0),
    "near_unit": (-1e-4, -1e-6),
    "mixed": (-20.0, -1e-4),
}


def random_state_space(batch_shape, length, state, regime="moderate", seed=0, dtype=torch.float64, multiplicity=1):
    g = torch.Generator().manual_seed(seed)
    lo, hi = DECAY_REGIMES[regime]
    u = torch.rand(*batch_shape, length, state, generator=g, dtype=dtype)
    log_decay = -torch.exp(torch.log(torch.tensor(-lo, dtype=dtype)) * u + torch.log(torch.tensor(-hi, dtype=dtype)) * (1 - u))
    B = torch.randn(*batch_shape, length, state, generator=g, dtype=dtype)
    C = torch.randn(*batch_shape, length, state, generator=g, dtype=dtype)
    return StateSpaceOperator(log_decay, B, C, multiplicity=multiplicity)


