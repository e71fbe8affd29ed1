"""Find the ESS-capable layers of any ``nn.Module`` and measure them on a batch.

A layer is ESS-capable when it implements the contract (:class:`ess_reg.contract.ESSLayer`:
``operator(x)`` returning an ``ess_reg`` operator and ``state_size()``), or when an adapter is
registered for its class (:func:`register_adapter`), for modules you do not own.  Measuring takes one forward pass of
the model: forward pre-hooks record each layer's input, then each layer's ``operator`` is
built from it (one extra projection per layer, no second forward of the whole model).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

import torch
from torch import nn

from ._checks import check_limit, check_number, check_seed
from .layer_report import LayerReport
from .state_size import tss_at
from .ess import ESS_KINDS, _check_ess_options, operator_ess
from .indices import index_rule, resolve_indices
from .matrix_free import KINDS as CERTIFIED_KINDS, certified_layer_ess
from .adapters.registry import Adapter, NotMeasurable, adapter_for as _adapter_for, register_adapter
from .contract import hand_over, listen
from .operators import DeferredOperator, Operator, resolve

__all__ = ["Adapter", "NotMeasurable", "register_adapter", "ess_layers", "capture_operators", "Probe", "measure"]


def ess_layers(model: nn.Module, names: Sequence[str] | None = None) -> dict[str, nn.Module]:
    """ESS-capable submodules by qualified name (optionally only ``names``); never empty."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if names is not None and (isinstance(names, (str, bytes)) or not isinstance(names, Collection)
                              or not all(isinstance(n, str) for n in names)):
        raise TypeError(f"layers (names) must be a list of layer names or None, got {names!r}")
    if names is not None and not names:
        raise ValueError("layers (names) is empty: name at least one ESS-capable layer, or pass None for all")
    found = {name: m for name, m in model.named_modules() if _adapter_for(m) is not None}
    # A measurable layer that wraps another one (GPT-Neo's GPTNeoAttention around its
    # GPTNeoSelfAttention, which returns the same probabilities) is the same operator twice:
    # the innermost is the one that computes it, and it alone is measured.
    layers = {name: m for name, m in found.items()
              if not any(other.startswith(f"{name}.") for other in found if name)}
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no ESS-capable layer: give its mixers operator(x) and "
            "state_size() methods, or register an adapter with ess_reg.probe.register_adapter"
        )
    if names is not None:
        unknown = sorted(set(names) - set(layers))
        if unknown:
            raise ValueError(f"no ESS-capable layer named {unknown} (layers/names); the model has {sorted(layers)}")
        layers = {name: layers[name] for name in names}
    return layers


def _handing_over(from_forward, name: str, left_out: dict[str, str]):
    def hook(module, args, kwargs, output):
        try:
            operator = from_forward(module, args, kwargs, output)
        except NotMeasurable as reason:  # this layer, as it ran: left out, and why
            left_out[name] = str(reason)
            return
        hand_over(module, operator)
    return hook


class capture_operators:
    """Context manager: during ``model(...)`` inside it, record what each layer needs for its
    operator; afterwards ``operators()`` returns every layer's operator.

    A layer that builds its operator in its own forward pass hands it over
    (:func:`ess_reg.contract.hand_over`; the zoo's mixers do): that operator is used, narrowed to
    the examples and channels asked, and nothing is recomputed. Other layers get
    ``operator(input)`` from their recorded input: one extra projection, never a second forward
    of the model. Nothing is set on the layers.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str] | Mapping[str, nn.Module] | None = None):
        # a mapping is layers already found (a Probe's, found once): the model is not walked again
        self.layers = dict(layers) if isinstance(layers, Mapping) else ess_layers(model, layers)
        self.inputs: dict[str, torch.Tensor] = {}
        self.handed: dict[str, Operator | DeferredOperator] = {}
        self.left_out: dict[str, str] = {}  # layer -> why its adapter could not read it (NotMeasurable)
        self._handles = []
        self._listeners: list[listen] = []

    def __enter__(self) -> "capture_operators":
        self.inputs.clear()
        self.handed.clear()
        self.left_out.clear()
        for name, module in self.layers.items():
            self._handles.append(module.register_forward_pre_hook(self._recorder(name), with_kwargs=True))
            self._listeners.append(listen(module, self._receiver(name)).__enter__())
            from_forward = _adapter_for(module).from_forward
            if from_forward is not None:
                self._handles.append(module.register_forward_hook(_handing_over(from_forward, name, self.left_out),
                                                                  with_kwargs=True))
        return self

    def _recorder(self, name: str):
        def hook(module, args, kwargs):
            # the input: the first positional argument, else the hidden states passed by keyword
            first = args[0] if args else kwargs.get("hidden_states",
                                                    next((v for v in kwargs.values() if torch.is_tensor(v)), None))
            self.inputs[name] = first
        return hook

    def _receiver(self, name: str):
        def receive(operator):
            self.handed[name] = operator
        return receive

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for listener in self._listeners:
            listener.__exit__()
        self._listeners.clear()

    def operators(self, batch_limit: int | None = None, pick_channels=None) -> dict[str, Operator]:
        """Every layer's operator; with ``batch_limit``, of the first examples of the batch only;
        with ``pick_channels``, a function ``(layer name, num_channels) -> index or None``, of
        the channels (batch dim 1) it picks."""
        check_limit("batch_limit", batch_limit)
        missing = sorted(set(self.layers) - set(self.inputs))
        if missing:
            raise RuntimeError(f"layers {missing} were not called during the captured forward pass")
        out = {}
        for name, module in self.layers.items():
            if name in self.left_out:
                continue
            op = self.handed.get(name)
            if op is None:
                adapter = _adapter_for(module)
                if adapter.operator is None:
                    raise RuntimeError(f"layer {name!r} ({type(module).__name__}) handed over no operator during the "
                                       "captured forward pass, and its adapter cannot build one from the input")
                x = self.inputs[name] if batch_limit is None else self.inputs[name][:batch_limit]
                op = adapter.operator(module, x)
            elif batch_limit is not None:
                op = op.batch_head(batch_limit)
            channels = pick_channels(name, op.batch_shape[1]) if pick_channels and len(op.batch_shape) >= 2 else None
            out[name] = resolve(op if channels is None else op.index_batch(1, channels))
        return out


def check_batch(inputs) -> None:
    """A batch of at least one sequence of at least 2 positions, ``(B, L, ...)``: ESS needs a
    split of the sequence, and an empty batch would fail deep inside the model."""
    if not torch.is_tensor(inputs) or inputs.dim() < 2 or inputs.shape[0] == 0 or inputs.shape[1] < 2:
        shape = f"shape {tuple(inputs.shape)}" if torch.is_tensor(inputs) else type(inputs).__name__
        raise ValueError(f"inputs must be a batch of at least one sequence of at least 2 positions, (B, L, ...) "
                         f"with B >= 1 and L >= 2; got {shape}")


class Probe:
    """The one route from a model's operators to numbers: which layers, which indices, which
    ESS, at what cost — shared by :func:`measure`, the penalty and the init search.

    Call it on inputs (one forward pass), or capture a forward pass you run anyway and read the
    reports afterwards::

        probe = Probe(model, indices=EvenIndices(16), task=task)
        reports = probe(x)                      # {layer name: LayerReport}
        with probe.capture():
            logits = model(x)                   # your training forward
        reports = probe.reports()               # with gradients, if the forward had them

    Args:
        layers: names of the layers to measure (default: every ESS-capable layer).
        indices: an index rule (:mod:`ess_reg.indices`) or its short form: ``None``/``"all"``,
            ``"random"``, ``"context_end"``, a list.
        kind: ``"entropy"``, ``"tolerance"`` or ``"soft_tolerance"``; ``ess_options`` go to it.
        batch_limit: measure only the first examples of the batch (cost control).
        channel_limit: measure this many random operators (heads, SSM channels) of each layer
            per call; their mean stays an unbiased estimate (cost control for ``s6``).
        context_end, items_to_recall: where the task's context ends and how many items it holds
            (read from ``task`` unless given).
        seed: seeds the generator of the random choices (indices, channels).
        certified: a relative tolerance: measure with :func:`~ess_reg.matrix_free.certified_ess`
            (entropy or tolerance kinds; measurement only, no gradient), which multiplies by
            the blocks where that is cheaper and takes the exact path where not.
        spectra_options: passed to :func:`~ess_reg.spectra.hankel_svdvals` (``dtype``...).

    After :meth:`reports`, :attr:`paths` says for each layer which spectra path measured it, and
    :attr:`channels` which of its operators (heads, channels) were measured: their indices, or
    None for all of them.
    """

    def __init__(self, model: nn.Module, *, layers: Sequence[str] | None = None, indices=None,
                 kind: str = "entropy", ess_options: Mapping | None = None, batch_limit: int | None = None,
                 channel_limit: int | None = None, context_end: int | None = None,
                 items_to_recall: int | None = None, task=None, seed: int = 0, certified: float | None = None,
                 **spectra_options):
        if task is not None and not all(hasattr(task, a) for a in ("context_end", "items_to_recall")):
            raise TypeError(f"task must be a task (with context_end and items_to_recall) or None, got {task!r}")
        if task is not None:
            context_end = task.context_end if context_end is None else context_end
            items_to_recall = task.items_to_recall if items_to_recall is None else items_to_recall
        if not isinstance(kind, str) or kind not in ESS_KINDS:
            raise ValueError(f"unknown ESS kind {kind!r}; choose one of {sorted(ESS_KINDS)}")
        _check_ess_options(kind, ess_options)
        if ess_options:  # their values, now: a bad tol would otherwise surface at the first measurement
            ESS_KINDS[kind](torch.ones(1, dtype=torch.float64), **ess_options)
        self.model = model
        self.layers = ess_layers(model, layers)  # validates now: raises without ESS-capable layers
        self.indices = index_rule(indices)
        self.kind, self.ess_options, self.spectra_options = kind, dict(ess_options or {}), spectra_options
        self.batch_limit = check_limit("batch_limit", batch_limit)
        self.channel_limit = check_limit("channel_limit", channel_limit)
        self.context_end = check_limit("context_end", context_end)
        self.items_to_recall = check_limit("items_to_recall", items_to_recall)
        self.generator = torch.Generator().manual_seed(check_seed("seed", seed))
        if certified is not None:
            check_number("certified", certified, minimum=0, strict=True)
            if kind not in CERTIFIED_KINDS:
                raise ValueError(f"certified ESS is for the kinds {CERTIFIED_KINDS}, not {kind!r} (a smooth "
                                 "surrogate is for losses, and the certified path gives no gradient)")
            if spectra_options:
                raise ValueError(f"certified ESS takes no spectra options, got {sorted(spectra_options)}")
        self.certified = certified
        self.paths: dict[str, str] = {}
        self.channels: dict[str, torch.Tensor | None] = {}
        self._capture: capture_operators | None = None

    def capture(self) -> capture_operators:
        """Context manager: a forward pass of the model inside it is what :meth:`reports` reads."""
        self._capture = capture_operators(self.model, self.layers)
        return self._capture

    def operators(self) -> dict[str, Operator]:
        """The captured layers' operators, within the batch and channel limits."""
        if self._capture is None or not self._capture.inputs:
            raise RuntimeError("no forward pass was captured: call the model inside `with probe.capture():`")
        return self._capture.operators(self.batch_limit, self._pick_channels)

    def _pick_channels(self, name: str, num_channels: int) -> torch.Tensor | None:
        if self.channel_limit is None or num_channels <= self.channel_limit:
            chosen = None
        else:  # sorted: the reports keep the layer's own channel order
            chosen = torch.randperm(num_channels, generator=self.generator)[: self.channel_limit].sort().values
        self.channels[name] = chosen
        return chosen

    @property
    def left_out(self) -> dict[str, str]:
        """The layers of the latest captured pass that could not be read, with the reason."""
        return dict(self._capture.left_out) if self._capture is not None else {}

    def reports(self, on_layer: Callable[[str, int, int], None] | None = None) -> dict[str, LayerReport]:
        """ESS and TSS of every measured layer of the captured forward pass; ``on_layer(name,
        done, total)`` after each layer, for progress on long work. A layer whose adapter could
        not read it is left out (:attr:`left_out` says why)."""
        operators = self.operators()
        if not operators:
            raise ValueError("no layer of the model could be measured: "
                             + "; ".join(f"{name}: {why}" for name, why in self.left_out.items()))
        reports = {}
        for done, (name, op) in enumerate(operators.items(), 1):
            idx = resolve_indices(self.indices(op.seq_len, self.context_end, self.generator), op.seq_len)  # once
            if self.context_end is not None and self.context_end > op.seq_len - 1:
                raise ValueError(f"context_end={self.context_end} lies past the sequence of layer {name!r} "
                                 f"(indices 1..L-1 = 1..{op.seq_len - 1})")
            if self.certified is None:
                ess = operator_ess(op, self.kind, idx, name=name, ess_options=self.ess_options, **self.spectra_options)
                method = self.spectra_options.get("method", "auto")
                self.paths[name] = op.methods[0] if method == "auto" else method
            else:
                ess, self.paths[name] = certified_layer_ess(op, self.kind, idx, self.certified, self.ess_options,
                                                            name=name)
            module = self.layers[name]
            reports[name] = LayerReport(
                name=name,
                ess=ess,
                tss=tss_at(_adapter_for(module).state_size(module), ess.indices, op.seq_len),
                # every channel of the operator serves `multiplicity` value channels
                value_channels=op.batch_shape[-1] * op.multiplicity if op.batch_shape else op.multiplicity,
                seq_len=op.seq_len,
                context_end=self.context_end,
                items_to_recall=self.items_to_recall,
                io_width=op.io_width,
            )
            if on_layer is not None:
                on_layer(name, done, len(operators))
        return reports

    def __call__(self, inputs: torch.Tensor) -> dict[str, LayerReport]:
        """One forward pass on ``inputs``, then :meth:`reports`."""
        if torch.is_tensor(inputs):
            check_batch(inputs)
        with self.capture():
            self.model(inputs)
        return self.reports()

    def random_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_random_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


def measure(
    model: nn.Module,
    inputs: torch.Tensor,
    indices=None,
    *,
    kind: str = "entropy",
    layers: Sequence[str] | None = None,
    context_end: int | None = None,
    items_to_recall: int | None = None,
    ess_options: Mapping | None = None,
    **spectra_options,
) -> dict[str, LayerReport]:
    """One forward pass on ``inputs``, then ESS and TSS of every ESS-capable layer
    (a one-off :class:`Probe`; ``indices`` as there, default all)."""
    return Probe(model, layers=layers, indices=indices, kind=kind, ess_options=ess_options,
                 context_end=context_end, items_to_recall=items_to_recall, **spectra_options)(inputs)
