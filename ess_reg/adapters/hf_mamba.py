"""``transformers``' ``MambaMixer`` (and Jamba's and FalconMamba's, which normalize ``dt``, ``B``
and ``C`` first) as a measurable layer: its selective SSM as a state-space
operator per inner channel (batch shape ``(B, intermediate_size)``, state ``state_size``), the
operator of its full-sequence forward (no cache, no padding mask). Loaded by the probe the first
time it meets a ``transformers`` module; nothing here imports ``transformers``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..operators import StateSpaceOperator, selective_ssm_operator

__all__ = ["mamba_streams", "mamba_operator", "mamba_readout", "zamba_mamba_streams", "zamba_mamba_operator",
           "zamba_mamba_readout"]


def mamba_streams(module, x: torch.Tensor):
    """What ``MambaMixer.forward`` computes before its scan: ``u, gate, dt`` ``(B, L, E)``,
    ``A`` ``(E, N)``, ``B, C`` ``(B, L, N)``."""
    length = x.shape[1]
    u, gate = module.in_proj(x).chunk(2, dim=-1)
    u = module.act(module.conv1d(u.transpose(1, 2))[..., :length]).transpose(1, 2)
    step, B, C = module.x_proj(u).split([module.time_step_rank, module.ssm_state_size, module.ssm_state_size],
                                        dim=-1)
    if hasattr(module, "dt_layernorm"):  # Jamba and FalconMamba normalize the three first
        step, B, C = module.dt_layernorm(step), module.b_layernorm(B), module.c_layernorm(C)
    dt = F.softplus(module.dt_proj(step))
    return u, gate, dt, -torch.exp(module.A_log.to(x.dtype)), B, C


def mamba_operator(module, x: torch.Tensor) -> StateSpaceOperator:
    """``T`` with ``y = T u`` per inner channel: decay ``exp(dt A)``, input ``dt B``, output ``C``."""
    _, _, dt, A, B, C = mamba_streams(module, x)
    return selective_ssm_operator(dt, A, B, C, check_values=False)


def mamba_readout(module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The mixer's output from the operator's output ``y`` ``(B, E, L)``: skip, gate, projection."""
    u, gate, *_ = mamba_streams(module, x)
    return module.out_proj((y.transpose(1, 2) + module.D.to(x.dtype) * u) * module.act(gate))


# ---- Zamba (v1): a Mamba whose inner channels form heads, each with its own x_proj and dt_proj ----


def zamba_mamba_streams(module, x: torch.Tensor):
    """What ``ZambaMambaMixer.forward`` computes before its scans: ``u, gate`` ``(B, E, L)`` (its
    in_proj interleaves them channel by channel), ``dt`` ``(B, H, L, head_dim)``, ``A`` ``(H,
    head_dim, N)``, ``B, C`` ``(B, H, L, N)``."""
    batch, length, _ = x.shape
    u, gate = module.in_proj(x).transpose(1, 2).reshape(batch, -1, 2, length).unbind(2)
    u = module.act(module.conv1d(u)[..., :length])
    heads = u.reshape(batch, module.n_mamba_heads, module.mamba_head_dim, length)
    params = torch.einsum("hpd,bhdl->bhlp", module.x_proj_weight.to(x.dtype), heads)
    step, B, C = params.split([module.time_step_rank, module.ssm_state_size, module.ssm_state_size], dim=-1)
    dt = torch.einsum("hdr,bhlr->bhld", module.dt_proj_weight.to(x.dtype), step)
    dt = F.softplus(dt + module.dt_proj_bias.to(x.dtype)[None, :, None, :])
    return u, gate, dt, -torch.exp(module.A_log.to(x.dtype)), B, C


def zamba_mamba_operator(module, x: torch.Tensor) -> StateSpaceOperator:
    """``T`` per inner channel (batch shape ``(B, E)``): the channel's decay ``exp(dt A)``, input
    ``dt B`` and output ``C`` of its head."""
    _, _, dt, A, B, C = zamba_mamba_streams(module, x)
    batch, heads, length, head_dim = dt.shape
    dt = dt.transpose(2, 3).unsqueeze(-1)  # (B, H, head_dim, L, 1)
    log_decay = dt * A[None, :, :, None, :]  # (B, H, head_dim, L, N)
    inputs, outputs = dt * B[:, :, None], C[:, :, None].expand_as(log_decay)
    return StateSpaceOperator(*(t.reshape(batch, heads * head_dim, length, -1) for t in (log_decay, inputs, outputs)),
                              check_values=False)


def zamba_mamba_readout(module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The mixer's output from the operator's output ``y`` ``(B, E, L)``: skip, gate, projection."""
    u, gate, *_ = zamba_mamba_streams(module, x)
    skip = module.D.to(x.dtype).reshape(1, -1, 1) * u
    return module.out_proj(((y + skip) * module.act(gate)).transpose(1, 2))


def mamba2_streams(module, x: torch.Tensor):
    """What ``Mamba2Mixer.forward`` computes before its scan: ``gate`` ``(B, L, E)``, values
    ``(B, H, L, head_dim)``, ``dt`` ``(B, L, H)``, ``A`` ``(H,)``, ``B, C`` ``(B, L, G, N)``."""
    b, length, _ = x.shape
    projected = module.in_proj(x * getattr(module, "ssm_in_multiplier", 1.0))
    if hasattr(module, "mup_vector"):  # Falcon-H1 scales its input and each projected stream
        projected = projected * module.mup_vector.to(x.dtype)
    gate, xbc, dt = projected.split([module.intermediate_size, module.conv_dim, module.num_heads], dim=-1)
    xbc = module.act(module.conv1d(xbc.transpose(1, 2))[..., :length]).transpose(1, 2)
    groups_n = module.n_groups * module.ssm_state_size
    values, B, C = xbc.split([module.intermediate_size, groups_n, groups_n], dim=-1)
    values = values.view(b, length, module.num_heads, module.head_dim).transpose(1, 2)
    low, high = module.time_step_limit
    dt = torch.clamp(F.softplus(dt + module.dt_bias.to(x.dtype)), min=low, max=high)
    shape = (b, length, module.n_groups, module.ssm_state_size)
    return gate, values, dt, -torch.exp(module.A_log.to(x.dtype)), B.view(shape), C.view(shape)


def mamba2_operator(module, x: torch.Tensor) -> StateSpaceOperator:
    """``T`` per head (batch shape ``(B, H)``, each serving ``head_dim`` value channels): one
    scalar decay ``exp(dt_h A_h)`` for all ``N`` states, input ``dt_h B_g``, output ``C_g`` of the
    head's group ``g``."""
    _, _, dt, A, B, C = mamba2_streams(module, x)
    per_group = module.num_heads // module.n_groups
    B, C = (t.repeat_interleave(per_group, dim=2).transpose(1, 2) for t in (B, C))  # (B, H, L, N)
    dt = dt.transpose(1, 2).unsqueeze(-1)  # (B, H, L, 1)
    log_decay = (dt * A[None, :, None, None]).expand(B.shape)
    return StateSpaceOperator(log_decay, dt * B, C, multiplicity=module.head_dim, check_values=False)


def mamba2_readout(module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The mixer's output from the operator's output ``y`` ``(B, H, L, head_dim)``: skip, gated
    norm, projection."""
    gate, values, *_ = mamba2_streams(module, x)
    y = (y + module.D.to(x.dtype)[None, :, None, None] * values).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
    if getattr(module, "mamba_rms_norm", True):
        return module.out_proj(module.norm(y, gate).to(x.dtype))
    return module.out_proj(y * F.silu(gate))  # Falcon-H1 without its gated norm
