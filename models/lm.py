"""A small language-model backbone around any mixer of the zoo (nanoGPT-like, pre-norm).

tokens -> embedding (+ learned positions) -> N x [x + mixer(short_conv(norm(x)));
x + mlp(norm(x))] -> norm -> LM head.

By default a block is the short conv and the mixer alone (``short_conv=4``, ``mlp_ratio=0``):
the setting every ``ess-train`` model config runs (``conf/model/base/lm.yaml`` holds the same
defaults, and a test keeps the two equal).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ess_reg.state_size import tss_at

from . import build_mixer
from .base import Mixer, RMSNorm, ShortConv, check_positive


class MLP(nn.Module):
    def __init__(self, d_model: int, ratio: int = 4):
        super().__init__()
        self.fc = nn.Linear(d_model, ratio * d_model)
        self.proj = nn.Linear(ratio * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.nn.functional.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, d_model: int, mixer: Mixer, mlp_ratio: int = 0, short_conv: int = 4):
        super().__init__()
        self.norm = RMSNorm(d_model)
        # The "Based recipe": a short causal conv before the mixer makes local token shifts cheap.
        self.short_conv = ShortConv(d_model, short_conv) if short_conv else None
        self.mixer = mixer
        self.mlp_norm = RMSNorm(d_model) if mlp_ratio else None
        self.mlp = MLP(d_model, mlp_ratio) if mlp_ratio else None

    def mixer_input(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        return self.short_conv(h) if self.short_conv is not None else h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.mixer_input(x))
        if self.mlp is not None:
            x = x + self.mlp(self.mlp_norm(x))
        return x


class LanguageModel(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        d_model: int = 64,
        n_layers: int = 2,
        mixer: str = "sa",
        mixer_kwargs: Mapping | None = None,
        max_len: int | None = None,
        mlp_ratio: int = 0,
        short_conv: int = 4,
        state_size: int | None = None,
    ):
        """``vocab_size`` tokens in and out; ``n_layers`` blocks of width ``d_model``, each around
        ``build_mixer(mixer, d_model, **mixer_kwargs)``.

        ``max_len``: learned position embeddings for sequences up to that length (None: none).
        ``mlp_ratio``: hidden width of an MLP after each mixer, in units of ``d_model`` (0: no
        MLP). ``short_conv``: kernel size of a depthwise causal conv before each mixer, the
        "Based recipe" that makes local token shifts cheap (0: off). Both must be >= 0.
        ``state_size``: the mixer's TSS per value channel through its own knob
        (``feature_dim``, ``d_state``, ``window``; see ``build_mixer``); None: the mixer's kwargs decide.
        """
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("d_model", d_model), ("n_layers", n_layers)):
            check_positive(name, value)
        if mlp_ratio < 0 or short_conv < 0:
            raise ValueError(f"mlp_ratio and short_conv must be >= 0 (0 turns them off), got {mlp_ratio}, {short_conv}")
        self.mixer_name = mixer
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.positions = nn.Embedding(max_len, d_model) if max_len else None
        self.blocks = nn.ModuleList(
            Block(d_model, build_mixer(mixer, d_model, state_size, **dict(mixer_kwargs or {})), mlp_ratio, short_conv)
            for _ in range(n_layers)
        )
        self.norm = RMSNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2:
            raise ValueError(f"tokens must have shape (batch, L), got {tuple(tokens.shape)}")
        x = self.embedding(tokens)
        if self.positions is not None:
            if tokens.shape[1] > self.positions.num_embeddings:
                raise ValueError(f"sequence length {tokens.shape[1]} exceeds max_len={self.positions.num_embeddings}")
            x = x + self.positions(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))

    def mixers(self) -> dict[str, Mixer]:
        """Every mixer by a stable name, ``"blocks.<i>.mixer"``."""
        return {f"blocks.{i}.mixer": block.mixer for i, block in enumerate(self.blocks)}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def total_tss(self, seq_len: int, indices=None) -> torch.Tensor:
        """Total TSS over layers and value channels at each index ``(len(indices),)``."""
        total = 0
        for mixer in self.mixers().values():
            total = total + mixer.value_channels * tss_at(mixer.state_size(), indices, seq_len)
        return total
