"""``analyze(model, inputs)``: every measurable layer's ESS, per head, in one call.

It measures every index by default (or the indices asked for), averages each operator's ESS
(a head, an SSM channel) over the examples and indices, and, given the ids of
boundary tokens, reads how much each layer's memory drops across them
(:mod:`ess_reg.boundaries`). A padded batch is measured on its real tokens (an
``attention_mask``). Works for any model the probe measures: the zoo, a layer that
implements :class:`ess_reg.contract.ESSLayer`, or an adapted one (Hugging Face Mamba, Mamba2 and
eager attention, ``nn.MultiheadAttention``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .boundaries import boundary_positions, boundary_profile, profile_drop
from ._checks import check_limit
from .indices import AllIndices, GivenIndices, index_rule
from .layer_report import LayerReport
from .probe import Probe, check_batch

__all__ = ["Analysis", "analyze"]

log = logging.getLogger("ess_reg")


@dataclass
class Analysis:
    reports: dict[str, LayerReport]  # with a mask of several lengths: the largest group's (see by_length)
    per_head: dict[str, torch.Tensor]  # layer -> (operators,) mean ESS of each head / channel
    modulation: dict[str, float] = field(default_factory=dict)  # layer -> drop across boundaries
    by_length: dict[int, dict[str, LayerReport]] = field(default_factory=dict)  # real length -> reports
    tss: dict[str, float] = field(default_factory=dict)  # layer -> mean TSS over every measured index
    # layer -> ESS at offsets -window..window around the separators (boundaries.boundary_profile)
    profiles: dict[str, torch.Tensor] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)  # layer -> why it could not be read (NotMeasurable)
    layer_types: dict[str, str] = field(default_factory=dict)  # layer -> its class name: a hybrid's kinds apart
    paths: dict[str, str] = field(default_factory=dict)  # layer -> the spectra path that measured it
    # layer -> the operators (heads, channels) measured, by index, where channel_limit drew some
    channels: dict[str, list[int]] = field(default_factory=dict)


    def table(self) -> str:
        """One line per layer: its type, operators, TSS, mean ESS, the spread over heads, the
        modulation; then the layers left out, with the reason."""
        width = max([4, *(len(t) for t in self.layer_types.values())])
        path_width = max([4, *(len(p) for p in self.paths.values())])
        lines = [f"{'layer':<28} {'type':<{width}} {'path':<{path_width}} {'ops':>4} {'TSS':>7} {'ESS':>7} "
                 f"{'head min':>9} {'head max':>9}" + (f" {'boundary drop':>13}" if self.modulation else "")]
        for name, report in self.reports.items():
            heads = self.per_head[name]
            tss = self.tss.get(name, report.tss_avg)
            line = (f"{name or '(model)':<28} {self.layer_types.get(name, '-'):<{width}} "
                    f"{self.paths.get(name, '-'):<{path_width}} {len(heads):>4} {tss:>7.2f} "
                    f"{heads.mean().item():>7.2f} {heads.min().item():>9.2f} {heads.max().item():>9.2f}")
            if self.modulation:  # + 0.0: a drop of -0.001 prints as 0.00, not -0.00
                line += f" {round(self.modulation.get(name, float('nan')), 2) + 0.0:>13.2f}"
            lines.append(line)
        lines += [f"{name:<28} {self.layer_types.get(name, '-'):<{width}} {'-':<{path_width}} not measured: {why}"
                  for name, why in self.left_out.items()]
        return "\n".join(lines)


def analyze(model: nn.Module, inputs: torch.Tensor | Mapping[str, torch.Tensor], *,
            attention_mask: torch.Tensor | None = None, separators: Collection[int] | None = None, window: int = 4,
            kind: str = "entropy", layers: Sequence[str] | None = None, batch_limit: int | None = None,
            indices="all", ess_options: Mapping | None = None, task=None, progress: bool = False,
            certified: float | None = None, channel_limit: int | None = None,
            memory_budget: int | None = None) -> Analysis:
    """ESS of every measurable layer of ``model`` on ``inputs``, per head; with ``separators``
    (token ids), each layer's ESS drop across them. ``batch_limit`` measures the first examples
    only; ``indices`` (default ``"all"``) chooses the indices as a :class:`Probe` does, e.g.
    ``EvenIndices(64)`` for a long sequence, where every index costs. The figures are means over
    the chosen indices; with ``separators`` and fewer than every index, the indices within
    ``window`` of each separator are measured as well, apart, for the drop alone. ``progress``
    logs each layer as it is done (logger ``ess_reg``, INFO), with the time so far. ``certified``
    (a relative tolerance) measures through :func:`~ess_reg.certified_ess`, which multiplies by
    large low-rank blocks instead of decomposing them; :attr:`Analysis.paths` and the table say
    which path measured each layer.

    Cost at scale: ``indices`` bounds the work per operator, ``channel_limit`` the operators per
    layer (that many heads or channels drawn at random, the same ones for every example and
    index; :attr:`Analysis.channels` lists them, ``per_head`` and the table's head columns are
    theirs, and the layer's mean ESS stays an unbiased estimate of the all-heads mean), and
    ``memory_budget`` (bytes) the working memory of the exact spectra path (see
    :func:`~ess_reg.spectra.hankel_svdvals`; not with ``certified``, which works block by
    block).

    ``inputs`` is a batch of token ids (or embeddings), or a dict of the model's keyword inputs
    (``input_ids``, ``attention_mask``, ...). Padding: with an ``attention_mask`` (1 for a real
    token; here or in the dict) each example is measured on its real tokens only, cut out of the
    padding, so that a padded batch measures what the same sequences measure unpadded. Each
    example's real tokens must be one run (left or right padding); examples of one real length
    are measured together, and the figures are averaged over every example and index."""
    kwargs, tokens = _split_inputs(inputs)
    if isinstance(inputs, Mapping) and attention_mask is None:
        attention_mask = kwargs.pop("attention_mask", None)
    elif kwargs is not None:
        kwargs.pop("attention_mask", None)
    if attention_mask is None:
        groups = {tokens.shape[1]: None}
    else:
        limit = check_limit("batch_limit", batch_limit)
        groups = _real_runs(attention_mask[:limit] if limit else attention_mask, tokens.shape[:2])
        batch_limit = None  # applied above, to the examples
    rule = index_rule(indices)
    options = dict(layers=layers, kind=kind, ess_options=ess_options, batch_limit=batch_limit, task=task,
                   certified=certified, channel_limit=channel_limit)
    if memory_budget is not None:
        options["memory_budget"] = memory_budget
    probe = Probe(model, indices=rule, **options)
    # Fewer than every index: the boundaries' neighbourhoods are measured by a probe of their own,
    # so that the means stay those of the chosen indices.
    around = None if separators is None or isinstance(rule, AllIndices) else Probe(model, indices="all", **options)
    by_length, measured, left_out = {}, [], {}
    for length, runs in groups.items():
        group_tokens = tokens if runs is None else _crop(tokens, runs, length)
        group_kwargs = kwargs if runs is None or kwargs is None else {
            k: _crop(v, runs, length) if torch.is_tensor(v) and v.shape[:2] == tokens.shape[:2] else v
            for k, v in kwargs.items()}

        positions = () if around is None else _near_boundaries(
            group_tokens[:batch_limit] if batch_limit else group_tokens, separators, window, length)
        probes = [probe, around] if positions else [probe]
        if positions:
            around.indices = GivenIndices(positions)
        with contextlib.ExitStack() as capturing:  # one forward pass serves both probes
            for each in probes:
                # Channels are drawn first in each call: the same seed draws the same heads for
                # every group and for both probes.
                each.generator.manual_seed(0)
                capturing.enter_context(each.capture())
            model(**group_kwargs) if group_kwargs is not None else model(group_tokens)
        on_layer = _progress(length, len(group_tokens)) if progress else None
        reports = by_length[length] = probe.reports(on_layer=on_layer)
        left_out.update(probe.left_out)
        near = around.reports(on_layer=on_layer) if positions else None
        measured.append((group_tokens, reports, near if around is not None else reports))
    result = _combine(by_length, measured, separators, window)
    result.left_out = left_out
    result.layer_types = {name: type(module).__name__ for name, module in probe.layers.items()}
    result.paths = dict(probe.paths)
    result.channels = {name: chosen.tolist() for name, chosen in probe.channels.items() if chosen is not None}
    return result


def _progress(length: int, examples: int):
    started = time.perf_counter()

    def on_layer(name: str, done: int, total: int) -> None:
        log.info("analyze: layer %d/%d (%s) measured, %d example(s) of %d tokens, %.1f s so far",
                 done, total, name, examples, length, time.perf_counter() - started)

    return on_layer


def _near_boundaries(tokens: torch.Tensor, separators: Collection[int], window: int, length: int) -> tuple[int, ...]:
    """The indices a boundary profile reads: within ``window`` of the index after each separator."""
    after = {p + 1 for _, p in boundary_positions(tokens, separators)}
    return tuple(sorted({i + offset for i in after for offset in range(-window, window + 1)
                         if 1 <= i + offset <= length - 1}))


def _split_inputs(inputs) -> tuple[dict | None, torch.Tensor]:
    if isinstance(inputs, Mapping):
        kwargs = dict(inputs)
        tokens = kwargs.get("input_ids", kwargs.get("inputs_embeds"))
        if tokens is None:
            raise ValueError(f"a dict of inputs needs input_ids or inputs_embeds; got keys {sorted(kwargs)}")
    else:
        kwargs, tokens = None, inputs
    check_batch(tokens)
    return kwargs, tokens


def _real_runs(mask, batch_shape) -> dict[int, list[tuple[int, int]]]:
    """``{real length: [(example, first real position), ...]}``; a mask that is not 0/1, of
    another shape, or with a hole in an example is refused."""
    if not torch.is_tensor(mask) or tuple(mask.shape) != tuple(batch_shape):
        shape = tuple(mask.shape) if torch.is_tensor(mask) else type(mask).__name__
        raise ValueError(f"attention_mask must be (B, L) = {tuple(batch_shape)} like the inputs, got {shape}")
    if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("attention_mask must hold 0 (padding) and 1 (a real token) only")
    real = mask.bool().cpu()
    groups: dict[int, list[tuple[int, int]]] = {}
    for example, row in enumerate(real):
        where = row.nonzero().flatten()
        n = len(where)
        if n < 2:
            raise ValueError(f"example {example} has {n} real token(s) in attention_mask: ESS needs at least 2")
        first = int(where[0])
        if int(where[-1]) - first + 1 != n:
            raise ValueError(f"example {example}'s real tokens are not one run (a hole in attention_mask at "
                             f"{first + int((~row[first:first + n]).nonzero()[0])}): pad on the left or the right only")
        groups.setdefault(n, []).append((example, first))
    return groups


def _crop(tensor: torch.Tensor, runs: list[tuple[int, int]], length: int) -> torch.Tensor:
    return torch.stack([tensor[example, first:first + length] for example, first in runs])


def _combine(by_length, measured, separators, window) -> Analysis:
    """One analysis from the groups: per head, the mean over every example and index."""
    names = next(iter(by_length.values())).keys()
    per_head, tss, modulation, profiles = {}, {}, {}, {}
    for name in names:
        weights = [r[name].ess.values.shape[0] * r[name].ess.values.shape[2] for _, r, _ in measured]
        per_head[name] = sum(w * r[name].ess.values.detach().double().mean(dim=(0, 2)).cpu()
                             for w, (_, r, _) in zip(weights, measured)) / sum(weights)
        tss[name] = sum(w * r[name].tss_avg for w, (_, r, _) in zip(weights, measured)) / sum(weights)
        if separators is not None:
            found = [(len(t), boundary_profile(near[name], t, separators, window))
                     for t, _, near in measured if near is not None and boundary_positions(t, separators)]
            drops = [(n, profile_drop(p, window)) for n, p in found]
            drops = [(n, d) for n, d in drops if d == d]  # NaN: nothing measured before the boundary
            modulation[name] = (sum(n * d for n, d in drops) / sum(n for n, _ in drops)) if drops else float("nan")
            if found:  # per offset, over the groups that reach it
                stacked = torch.stack([p for _, p in found])
                weight = torch.tensor([float(n) for n, _ in found])[:, None] * ~stacked.isnan()
                profiles[name] = (weight * stacked.nan_to_num()).sum(0) / weight.sum(0)
    largest = max(by_length, key=lambda n: (len(next(iter(by_length[n].values())).ess.values), n))
    return Analysis(by_length[largest], per_head, modulation, by_length, tss, profiles)
