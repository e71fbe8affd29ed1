"""``transformers``' ``MambaMixer`` as a measurable layer: its selective SSM as a state-space
operator per inner channel (batch shape ``(B, intermediate_size)``, state ``state_size``), the
operator of its full-sequence forward (no cache, no padding mask). Loaded by the probe the first
time it meets a ``transformers`` module; nothing here imports ``transformers``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..operators import StateSpaceOperator

__all__ = ["mamba_streams", "mamba_operator", "mamba_readout"]


def mamba_streams(module, x: torch.Tensor):
    """What ``MambaMixer.forward`` computes before its scan: ``u, gate, dt`` ``(B, L, E)``,
    ``A`` ``(E, N)``, ``B, C`` ``(B, L, N)``."""
    length = x.shape[1]
    u, gate = module.in_proj(x).chunk(2, dim=-1)
    u = module.act(module.conv1d(u.transpose(1, 2))[..., :length]).transpose(1, 2)
    step, B, C = module.x_proj(u).split([module.time_step_rank, module.ssm_state_size, module.ssm_state_size],
                                        dim=-1)
    dt = F.softplus(module.dt_proj(step))
    return u, gate, dt, -torch.exp(module.A_log.to(x.dtype)), B, C


def mamba_operator(module, x: torch.Tensor) -> StateSpaceOperator:
    """``T`` with ``y = T u`` per inner channel: decay ``exp(dt A)``, input ``dt B``, output ``C``."""
    _, _, dt, A, B, C = mamba_streams(module, x)
    shape = (x.shape[0], A.shape[0], x.shape[1], A.shape[1])
    dt = dt.transpose(1, 2).unsqueeze(-1)  # (B, E, L, 1)
    return StateSpaceOperator(dt * A[None, :, None, :], dt * B.unsqueeze(1), C.unsqueeze(1).expand(shape),
                              check_values=False)


def mamba_readout(module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The mixer's output from the operator's output ``y`` ``(B, E, L)``: skip, gate, projection."""
    u, gate, *_ = mamba_streams(module, x)
    return module.out_proj((y.transpose(1, 2) + module.D.to(x.dtype) * u) * module.act(gate))
