"""Adapters for ``transformers`` modules; imported by the probe the first time it meets one (so
``import ess_reg`` never imports ``transformers``), then asked about each class it meets.

- ``MambaMixer`` and ``Mamba2Mixer``: their selective SSMs (:mod:`ess_reg.adapters.hf_mamba`),
  and the other families' copies of them: Jamba's and FalconMamba's Mamba mixers (with their
  norms on ``dt``, ``B``, ``C``), Bamba's, Nemotron-H's, Zamba2's, GraniteMoeHybrid's and
  Falcon-H1's Mamba2 (with its multipliers, and its silu gate where it has no gated norm), and
  Zamba's Mamba with heads of their own projections.
- Gated DeltaNet layers (Qwen3-Next): the delta rule per value head
  (:mod:`ess_reg.adapters.hf_deltanet`); Kimi's delta attention, with a gate per key channel
  (:mod:`ess_reg.adapters.hf_kda`); LFM2's gated short convolutions
  (:mod:`ess_reg.adapters.hf_conv`); RecurrentGemma's RG-LRU (:mod:`ess_reg.adapters.hf_rglru`);
  MiniMax's lightning attention (:mod:`ess_reg.adapters.hf_lightning`); RWKV's WKV
  (:mod:`ess_reg.adapters.hf_rwkv`); xLSTM's mLSTM (:mod:`ess_reg.adapters.hf_xlstm`).
- Attention layers (a class named ``...Attention`` whose forward returns ``(output, weights)``,
  as Llama, Qwen, Mistral, GPT-2 and most decoders do): the per-head attention probabilities it
  returns when the model runs with ``attn_implementation="eager"``, as dense operators of batch
  shape ``(B, heads)``, each serving ``head_dim`` value channels. Their TSS follows the layer's
  mask: ``min(i, L - i)`` for full attention, capped at ``W - 1`` for a sliding window of ``W``,
  and within its block for chunked attention (:func:`attention_reach`).

:data:`FAMILIES` lists them; docs/coverage.md is generated from it (:func:`coverage_table`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..state_size import chunked_state_size, growing_state_size
from ..operators import DenseOperator
from .registry import Adapter, NotMeasurable, register_adapter
from .hf_conv import short_conv_operator
from .hf_deltanet import gated_deltanet_operator
from .hf_kda import kda_operator
from .hf_lightning import lightning_operator
from .hf_mamba import mamba2_operator, mamba_operator, zamba_mamba_operator
from .hf_rglru import rglru_from_forward
from .hf_rwkv import rwkv_operator
from .hf_xlstm import mlstm_operator

__all__ = ["maybe_register", "FAMILIES", "Family", "coverage_table", "attention_from_forward", "attention_reach",
           "attention_state_size"]


def attention_from_forward(module, args, kwargs, output) -> DenseOperator:
    """The attention probabilities an attention layer returned, ``(B, H, L, L)``, checked to be
    what softmax attention returns: causal (nothing above the diagonal) and non-negative. A layer
    named like attention that returns something else under eager attention (a linear attention's
    state, nothing at all) is left out with the reason (:class:`NotMeasurable`), not misread."""
    name = type(module).__name__
    implementation = getattr(getattr(module, "config", None), "_attn_implementation", None)
    weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
    if not (torch.is_tensor(weights) and weights.dim() == 4):
        if implementation not in (None, "eager"):
            raise RuntimeError(f"{name} returned no attention probabilities (attention implementation "
                               f"{implementation!r}): load or build the model with attn_implementation='eager' to "
                               "measure it")
        raise NotMeasurable(f"{name} returns no attention probabilities under eager attention: not softmax "
                            "attention, and no adapter for it yet")
    length = weights.shape[-1]
    if weights.shape[-2] != length or not torch.is_tensor(output[0]) or output[0].shape[-2] != length:
        raise NotMeasurable(f"{name} returned a tensor of shape {tuple(weights.shape)} beside its output, not "
                            "(B, H, L, L) attention probabilities over its sequence")
    check = weights.detach()
    above = check.float().triu(1).abs().amax().item()
    if above > 0 or bool((check < 0).any()):
        raise NotMeasurable(f"{name} returned a (B, H, L, L) tensor that is not causal attention probabilities "
                            f"({'weight above the diagonal' if above > 0 else 'negative entries'})")
    head_dim = getattr(module, "head_dim", None) or output[0].shape[-1] // weights.shape[1]
    return DenseOperator(weights, multiplicity=int(head_dim))


def _positive_int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def attention_reach(module):
    """What the layer's mask lets through, as ``(kind, size)``: ``("window", W)`` for sliding
    windows (a query sees itself and the ``W - 1`` tokens before it, as transformers' masks do),
    ``("chunk", C)`` for chunked attention (a query sees the earlier tokens of its own block of
    ``C``), ``("full", None)`` otherwise. Read from the layer (``sliding_window``, GPT-Neo's
    ``attention_type``) or its config (``layer_types[layer_idx]``; a model-wide
    ``sliding_window`` where layers have no types, as Mistral's)."""
    config = getattr(module, "config", None)
    window = _positive_int(getattr(module, "sliding_window", None))
    if window:
        return "window", window
    layer_types = getattr(config, "layer_types", None)
    layer = getattr(module, "layer_idx", None)
    if layer_types and isinstance(layer, int) and 0 <= layer < len(layer_types):
        kind = layer_types[layer]
        if (kind in ("sliding_attention", "local_attention", "local")
                and _positive_int(getattr(config, "sliding_window", None))):
            return "window", config.sliding_window
        if kind == "chunked_attention" and _positive_int(getattr(config, "attention_chunk_size", None)):
            return "chunk", config.attention_chunk_size
        return "full", None
    if getattr(module, "attention_type", None) == "local" and _positive_int(getattr(config, "window_size", None)):
        return "window", config.window_size  # GPT-Neo's local layers
    if (not hasattr(module, "sliding_window") and _positive_int(getattr(config, "sliding_window", None))
            and getattr(config, "use_sliding_window", True)):
        return "window", config.sliding_window  # one window for every layer (Mistral)
    return "full", None


def attention_state_size(module):
    """TSS of an attention layer: the window's ``W - 1`` past tokens, the chunk's rule, or
    ``min(i, L - i)`` for full causal attention."""
    kind, size = attention_reach(module)
    if kind == "window":
        return size - 1
    if kind == "chunk":
        return chunked_state_size(size)
    return growing_state_size


def _is_attention(cls: type) -> bool:
    return cls.__name__.endswith("Attention") and ".models." in cls.__module__


@dataclass(frozen=True)
class Family:
    """One row of the coverage table: which transformers classes are measured, and how."""

    models: str                 # the model families
    classes: tuple[str, ...]    # the layer classes, by name
    operator: str               # what the layer is measured as
    tss: str                    # its TSS per operator
    tested: str                 # the test that checks the operator against the layer's own forward
    adapter: Adapter | None = field(default=None, compare=False)
    exact: bool = True          # the operator the layer applies (False: the Jacobian of a linearization)


_MAMBA = Adapter(operator=mamba_operator, state_size=lambda m: m.ssm_state_size)
_MAMBA2 = Adapter(operator=mamba2_operator, state_size=lambda m: m.ssm_state_size)
_TESTS = "tests/core/test_adapters_hf.py::"

# Each class is matched by name (its module is never imported here); a family's copy of a mixer
# is listed only once its own forward has been checked against the operator.
FAMILIES = (
    Family("Mamba", ("MambaMixer",), "selective SSM per inner channel", "`ssm_state_size`",
           _TESTS + "test_mamba_operator_reproduces_the_mixer", _MAMBA),
    Family("Jamba, FalconMamba", ("JambaMambaMixer", "FalconMambaMixer"),
           "selective SSM per inner channel, after the norms on dt, B, C", "`ssm_state_size`",
           _TESTS + "test_a_mamba_mixer_with_norms_on_dt_b_c_is_measured_as_the_operator_it_applies", _MAMBA),
    Family("Zamba", ("ZambaMambaMixer",), "selective SSM per inner channel, heads with their own x_proj and dt_proj",
           "`mamba_d_state`", _TESTS + "test_zamba_s_multi_head_mamba_is_measured_as_the_operator_it_applies",
           Adapter(operator=zamba_mamba_operator, state_size=lambda m: m.ssm_state_size)),
    Family("Mamba2", ("Mamba2Mixer",), "SSD per head, scalar decay", "`ssm_state_size`",
           _TESTS + "test_mamba2_operator_reproduces_the_mixer", _MAMBA2),
    Family("Bamba, Nemotron-H, Zamba2, GraniteMoeHybrid, Falcon-H1",
           ("BambaMixer", "NemotronHMamba2Mixer", "Zamba2MambaMixer", "GraniteMoeHybridMambaLayer", "FalconH1Mixer"),
           "SSD per head, scalar decay", "`ssm_state_size`",
           _TESTS + "test_a_hybrid_s_mamba2_mixer_is_measured_as_the_operator_it_applies", _MAMBA2),
    Family("Qwen3-Next", ("Qwen3NextGatedDeltaNet",), "gated delta rule per value head",
           "`linear_key_head_dim`", _TESTS + "test_qwen3_next_gated_deltanet_is_measured_as_the_delta_rule_it_applies",
           Adapter(operator=gated_deltanet_operator, state_size=lambda m: m.head_k_dim)),
    Family("Kimi-Linear", ("KimiLinearDeltaAttention",), "delta rule per head with one forget gate per key "
           "channel", "`linear_attn_config['head_dim']`",
           _TESTS + "test_kimi_delta_attention_is_measured_as_the_delta_rule_with_gates_per_key_channel",
           Adapter(operator=kda_operator, state_size=lambda m: m.head_dim)),
    Family("LFM2", ("Lfm2ShortConv",), "gated short convolution per channel, banded Toeplitz between two gates "
           "(dense)", "`conv_L_cache - 1`",
           _TESTS + "test_lfm2_short_convolution_is_measured_as_its_gated_toeplitz_operator",
           Adapter(operator=short_conv_operator, state_size=lambda m: m.conv_kernel_size - 1)),
    Family("RecurrentGemma", ("RecurrentGemmaRglru",), "RG-LRU: a diagonal recurrence per channel, from the "
           "layer's forward", "1 (a scalar state per channel)",
           _TESTS + "test_recurrent_gemma_s_rg_lru_is_measured_as_its_diagonal_recurrence",
           Adapter(operator=None, state_size=lambda m: 1, from_forward=rglru_from_forward)),
    Family("MiniMax", ("MiniMaxLightningAttention",), "lightning attention: linear attention with a fixed "
           "decay per head", "`head_dim`",
           _TESTS + "test_minimax_lightning_attention_is_measured_as_decayed_linear_attention",
           Adapter(operator=lightning_operator, state_size=lambda m: m.head_dim)),
    Family("RWKV", ("RwkvSelfAttention",), "WKV per channel: a diagonal recurrence below the diagonal, the "
           "current token's bonus on the diagonal (which no H_i contains) added in the readout", "1 (the numerator per "
           "channel; the denominator reads keys only)",
           _TESTS + "test_rwkv_wkv_is_measured_as_the_recurrence_it_applies",
           Adapter(operator=rwkv_operator, state_size=lambda m: 1)),
    Family("xLSTM", ("xLSTMLayer",), "mLSTM per head: a linear attention with a scalar forget gate, its "
           "normalizer (queries, keys and gates only) in the output factor", "`qk_dim / num_heads`",
           _TESTS + "test_xlstm_mlstm_is_measured_as_the_gated_linear_attention_it_applies",
           Adapter(operator=mlstm_operator, state_size=lambda m: m.qk_dim // m.config.num_heads)),
    Family("decoders with eager attention (Llama, Qwen, Mistral, Gemma-2, GPT-Neo, Llama 4, the hybrids' "
           "attention, ...)", ("*Attention",),
           "attention probabilities per head, from the layer's own forward (`attn_implementation=\"eager\"`)",
           "`min(i, L - i)`; `min(i, L - i, W - 1)` for a sliding window of W; within its block for chunked attention",
           _TESTS + "test_windowed_and_chunked_layers_get_their_mask_s_reach_and_attain_it",
           Adapter(operator=None, state_size=attention_state_size, from_forward=attention_from_forward)),
)
_BY_CLASS = {name: family for family in FAMILIES for name in family.classes if not name.startswith("*")}
_ATTENTION = FAMILIES[-1]


def maybe_register(cls: type) -> None:
    family = _BY_CLASS.get(cls.__name__) or (_ATTENTION if _is_attention(cls) else None)
    if family is not None:
        register_adapter(cls, family.adapter)


def coverage_table() -> str:
    """The coverage table of docs/coverage.md, from :data:`FAMILIES` (a test keeps them equal)."""
    lines = ["| models | layer classes | measured as | exact or Jacobian | TSS per operator | checked by |",
             "| --- | --- | --- | --- | --- | --- |"]
    for f in FAMILIES:
        lines.append(f"| {f.models} | {', '.join(f'`{c}`' for c in f.classes)} | {f.operator} | "
                     f"{'exact' if f.exact else 'Jacobian'} | {f.tss} | `{f.tested}` |")
    return "\n".join(lines)
