"""Pick an initialization by its ESS before spending compute on training.

    result = select_init(lambda c: make_model(**c), candidates=[{"seed": s, "a_init": a} for ...],
                         probe_inputs=x, score="utilization")
    model = result.model

Each candidate is built under ``torch.manual_seed(candidate seed)`` (its ``"seed"`` entry, else
its position), so the same candidates always give the same scores and the same choice.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ._checks import check_limit, check_seed
from .layer_report import MEASURES, LayerReport, mean_over_layers
from .indices import index_rule
from .probe import measure

__all__ = ["select_init", "InitSearchResult", "SCORES"]


def _score(name: str) -> Callable[[Mapping[str, LayerReport]], float]:
    def score(reports: Mapping[str, LayerReport]) -> float:
        return mean_over_layers(reports, name)

    score.__name__ = name
    return score


# The measures the diagnostics report and the penalty acts on, averaged over layers:
# utilization (ESS / reachable state), per_item (ESS/kv at the end of the context), ess.
SCORES: dict[str, Callable[[Mapping[str, LayerReport]], float]] = {name: _score(name) for name in MEASURES}


@dataclass
class InitSearchResult:
    model: nn.Module
    candidate: object
    index: int
    scores: list[float]
    candidates: list

    def rows(self) -> list[dict]:
        """Every candidate with its score and whether it was chosen, as plain data."""
        return [{"candidate": c, "score": s, "chosen": i == self.index}
                for i, (c, s) in enumerate(zip(self.candidates, self.scores))]

    def table(self) -> str:
        """The candidates and their scores as text, the chosen one marked (``print(result.table())``)."""
        width = max(len(str(c)) for c in self.candidates)
        lines = [f"{'candidate':<{width}}  {'score':>9}", "-" * (width + 11)]
        lines += [f"{str(r['candidate']):<{width}}  {r['score']:9.4f}{'  <- chosen' if r['chosen'] else ''}"
                  for r in self.rows()]
        return "\n".join(lines)


def select_init(
    factory: Callable[[object], nn.Module],
    candidates: Sequence,
    probe_inputs: torch.Tensor,
    *,
    score: "str | Callable[[Mapping[str, LayerReport]], float]" = "utilization",
    indices=None,
    kind: str = "entropy",
    context_end: int | None = None,
    items_to_recall: int | None = None,
    maximize: bool = True,
    on_candidate: Callable[[int, object, float, Mapping[str, LayerReport]], None] | None = None,
) -> InitSearchResult:
    """Build every candidate, score its ESS on ``probe_inputs``, keep the best.

    ``score`` is a name from :data:`SCORES` (the measures of :data:`ess_reg.layer_report.MEASURES`,
    averaged over layers) or a function of the per-layer reports; ``indices`` an index rule or
    its short form (default all); ``kind`` the ESS;
    ``on_candidate(i, candidate, score, reports)`` is called after each one (logging, progress).
    """
    if not callable(factory):
        raise TypeError(f"factory must be a function candidate -> model, got {factory!r}")
    if isinstance(candidates, (str, bytes)) or not isinstance(candidates, Iterable):
        raise TypeError(f"candidates must be a list of candidates, got {candidates!r}")
    candidates = list(candidates)
    if not candidates:
        raise ValueError("select_init needs at least one candidate (candidates is empty)")
    seeds = [c.get("seed", i) if isinstance(c, Mapping) else i for i, c in enumerate(candidates)]
    for i, seed in enumerate(seeds):
        check_seed(f"candidates[{i}]['seed']", seed)
    if isinstance(score, str):
        if score not in SCORES:
            raise ValueError(f"unknown score {score!r}; choose one of {sorted(SCORES)} or pass a function")
        score_fn = SCORES[score]
    elif callable(score):
        score_fn = score
    else:
        raise TypeError(f"score must be one of {sorted(SCORES)} or a function of the reports, got {score!r}")
    indices = index_rule(indices)  # its form now; the range once the model's L is known
    check_limit("context_end", context_end)
    check_limit("items_to_recall", items_to_recall)
    if on_candidate is not None and not callable(on_candidate):
        raise TypeError(f"on_candidate must be a function or None, got {on_candidate!r}")
    scores, best, best_model = [], None, None
    for i, (candidate, seed) in enumerate(zip(candidates, seeds)):
        torch.manual_seed(seed)
        model = factory(candidate)
        if not isinstance(model, nn.Module):
            raise TypeError(f"factory must return a torch.nn.Module, got {type(model).__name__} for candidate {i}")
        with torch.no_grad():
            reports = measure(model.eval(), probe_inputs, indices, kind=kind, context_end=context_end,
                              items_to_recall=items_to_recall, dtype=torch.float32)
        value = float(score_fn(reports))
        if not math.isfinite(value):
            raise ValueError(f"candidate {candidate!r} scored {value}: the score must be finite")
        scores.append(value)
        if on_candidate is not None:
            on_candidate(i, candidate, value, reports)
        better = best is None or (value > scores[best] if maximize else value < scores[best])
        if better:
            best, best_model = i, model
    return InitSearchResult(model=best_model.train(), candidate=candidates[best], index=best,
                            scores=scores, candidates=candidates)
