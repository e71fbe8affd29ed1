"""Every public function checks its arguments up front: a bad value raises ValueError or TypeError
whose message names the argument, instead of a silent wrong result or an error from deep inside.

One case per bad argument a systematic probe of the API found (each passed silently or failed
with an internal error before the checks were added)."""

import functools
import math
import types

import pytest
import torch

from ess_reg import (DenseOperator, LayerESS, average_ess, entropy_ess, entropy_ess_from_svdvals, hankel_svdvals,
                     layer_ess, soft_tolerance_ess, soft_tolerance_ess_from_svdvals, total_ess)
from ess_reg.layer_report import utilization
from ess_reg.state_size import growing_state_size, reachable_state, tss_at
from ess_reg.verdict import diagnose as diagnose_reports
from ess_reg.layer_report import model_summary
from ess_reg.init_search import select_init
from ess_reg.indices import EvenIndices, RandomIndices
from ess_reg.penalty import Budget, DecayIdentityPenalty, ESSPenalty, Schedule, Target
from ess_reg.probe import Adapter, capture_operators, ess_layers, measure, register_adapter
from ess_reg.kernels.scan import scan_apply
from ess_reg.indices import resolve_indices
from ess_reg.tasks import MQAR, Compression, SelectiveCopy

from factories import lm, random_causal, random_state_space
from factories import tokens as token_batch

L = 8
NAN, INF = float("nan"), float("inf")


def dense():
    return random_causal(2, 3, L, L, seed=0)


def ssm():
    return random_state_space((2, 3), L, 4, seed=1)


def nan_operator():
    T = dense()
    T[0, 0, 4, 2] = NAN
    return DenseOperator(T, check_values=False)  # a model's forward pass skips the value scan


def sigma():
    return torch.rand(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))


@functools.cache
def model():
    return lm("gla", n_layers=1)


def tokens():
    return token_batch(seed=3, batch=2, length=12)


def task_info(context_end=4, items_to_recall=2):
    """What the penalty reads off a task, without a task."""
    return types.SimpleNamespace(context_end=context_end, items_to_recall=items_to_recall)


@functools.cache
def reports():
    return measure(model(), tokens(), [2, 6, 10])


def captured_operators(**kwargs):
    with capture_operators(model()) as capture:
        model()(tokens())
    return capture.operators(**kwargs)


def layer_values(**overrides):
    kwargs = {"values": torch.rand(2, 3, 4), "indices": torch.tensor([1, 2, 3, 4]), "multiplicity": 1, **overrides}
    return LayerESS(**kwargs)


def mqar():
    return MQAR(vocab_size=64, seq_len=32, num_kv_pairs=4)


# (argument name the message must contain, the call)
CASES = {
    # ---- ESS (ess_reg/ess.py)
    "entropy_ess_from_svdvals-eps=0": ("eps", lambda: entropy_ess_from_svdvals(sigma(), eps=0)),
    "entropy_ess_from_svdvals-eps=nan": ("eps", lambda: entropy_ess_from_svdvals(sigma(), eps=NAN)),
    "entropy_ess_from_svdvals-eps=-1": ("eps", lambda: entropy_ess_from_svdvals(sigma(), eps=-1.0)),
    "entropy_ess_from_svdvals-eps=inf": ("eps", lambda: entropy_ess_from_svdvals(sigma(), eps=INF)),
    "entropy_ess_from_svdvals-eps=bool": ("eps", lambda: entropy_ess_from_svdvals(sigma(), eps=True)),
    "entropy_ess_from_svdvals-eps=str": ("eps", lambda: entropy_ess_from_svdvals(sigma(), eps="x")),
    "entropy_ess-eps=0": ("eps", lambda: entropy_ess(ssm(), eps=0.0)),
    "entropy_ess-eps=nan": ("eps", lambda: entropy_ess(dense(), eps=NAN)),
    "soft_tolerance_ess_from_svdvals-temperature=inf":
        ("temperature", lambda: soft_tolerance_ess_from_svdvals(sigma(), temperature=INF)),
    "soft_tolerance_ess_from_svdvals-temperature=str":
        ("temperature", lambda: soft_tolerance_ess_from_svdvals(sigma(), temperature="x")),
    "soft_tolerance_ess-temperature=bool": ("temperature", lambda: soft_tolerance_ess(ssm(), temperature=True)),
    "average_ess-ess=empty": ("ess", lambda: average_ess(torch.tensor([]))),
    "average_ess-ess=None": ("ess", lambda: average_ess(None)),
    "total_ess-ess=list": ("ess", lambda: total_ess([[1.0, 2.0]])),
    "total_ess-multiplicity=-1": ("multiplicity", lambda: total_ess(torch.ones(2, 3, 4), multiplicity=-1)),
    "total_ess-multiplicity=0": ("multiplicity", lambda: total_ess(torch.ones(2, 3, 4), multiplicity=0)),
    "total_ess-multiplicity=1.5": ("multiplicity", lambda: total_ess(torch.ones(2, 3, 4), multiplicity=1.5)),
    "total_ess-multiplicity=bool": ("multiplicity", lambda: total_ess(torch.ones(2, 3, 4), multiplicity=True)),
    "total_ess-multiplicity=nan": ("multiplicity", lambda: total_ess(torch.ones(2, 3, 4), multiplicity=NAN)),
    "total_ess-channel_dim=5": ("channel_dim", lambda: total_ess(torch.ones(2, 3, 4), channel_dim=5)),
    "total_ess-channel_dim=None": ("channel_dim", lambda: total_ess(torch.ones(2, 3, 4), channel_dim=None)),
    "total_ess-channel_dim=1.5": ("channel_dim", lambda: total_ess(torch.ones(2, 3, 4), channel_dim=1.5)),
    "LayerESS-multiplicity=-1": ("multiplicity", lambda: layer_values(multiplicity=-1)),
    "LayerESS-multiplicity=1.5": ("multiplicity", lambda: layer_values(multiplicity=1.5)),
    "LayerESS-indices=list": ("indices", lambda: layer_values(indices=[1, 2, 3, 4])),
    "LayerESS-indices=0": ("indices", lambda: layer_values(indices=torch.tensor([0, 1, 2, 3]))),
    "LayerESS-indices=wrong_length": ("indices", lambda: layer_values(indices=torch.tensor([1, 2]))),
    "LayerESS-values=list": ("values", lambda: layer_values(values=[[[1.0]]])),
    "LayerESS-values=2d": ("values", lambda: layer_values(values=torch.rand(3, 4))),
    "layer_ess-operators=tensor": ("operators", lambda: layer_ess(dense())),
    "layer_ess-operators=nan_T": ("operators", lambda: layer_ess({"a": torch.full((3, L, L), NAN)})),
    "layer_ess-kind=list": ("kind", lambda: layer_ess({"a": ssm()}, kind=["entropy"])),
    "layer_ess-ess_options=unknown": ("ess_options", lambda: layer_ess({"a": ssm()}, ess_options={"bogus": 1})),
    "layer_ess-ess_options=int": ("ess_options", lambda: layer_ess({"a": ssm()}, ess_options=3)),
    "layer_ess-memory_budget=nan": ("memory_budget", lambda: layer_ess({"a": dense()}, memory_budget=NAN)),
    # ---- spectra (ess_reg/spectra.py), and the ESS functions that forward their options
    "hankel_svdvals-memory_budget=nan": ("memory_budget", lambda: hankel_svdvals(dense(), memory_budget=NAN)),
    "hankel_svdvals-memory_budget=inf": ("memory_budget", lambda: hankel_svdvals(ssm(), memory_budget=INF)),
    "hankel_svdvals-memory_budget=list": ("memory_budget", lambda: hankel_svdvals(dense(), memory_budget=[])),
    "hankel_svdvals-memory_budget=str": ("memory_budget", lambda: hankel_svdvals(dense(), memory_budget="1GB")),
    "entropy_ess-memory_budget=nan": ("memory_budget", lambda: entropy_ess(ssm(), memory_budget=NAN)),
    "soft_tolerance_ess-memory_budget=inf": ("memory_budget", lambda: soft_tolerance_ess(dense(), memory_budget=INF)),
    "hankel_svdvals-chunk_size=1.5": ("chunk_size", lambda: hankel_svdvals(ssm(), chunk_size=1.5)),
    "hankel_svdvals-chunk_size=str": ("chunk_size", lambda: hankel_svdvals(ssm(), chunk_size="4")),
    "hankel_svdvals-chunk_size=bool": ("chunk_size", lambda: hankel_svdvals(ssm(), chunk_size=True)),
    "hankel_svdvals-chunk_size=0,dense": ("chunk_size", lambda: hankel_svdvals(dense(), chunk_size=0)),
    "entropy_ess-chunk_size=inf": ("chunk_size", lambda: entropy_ess(ssm(), chunk_size=INF)),
    "hankel_svdvals-indices=float": ("indices", lambda: hankel_svdvals(dense(), 1.5)),
    "hankel_svdvals-indices=bool": ("indices", lambda: hankel_svdvals(dense(), True)),
    "hankel_svdvals-indices=2d_tensor": ("indices", lambda: hankel_svdvals(dense(), torch.tensor([[1, 2]]))),
    "hankel_svdvals-indices=set": ("indices", lambda: hankel_svdvals(dense(), {1, 2})),
    "hankel_svdvals-indices=object": ("indices", lambda: hankel_svdvals(ssm(), object())),
    "hankel_svdvals-x=NaN_operator": ("x", lambda: hankel_svdvals(nan_operator())),
    "entropy_ess-x=NaN_operator": ("x", lambda: entropy_ess(nan_operator())),
    "resolve_indices-seq_len=bool": ("seq_len", lambda: resolve_indices([1], True)),
    "resolve_indices-seq_len=nan": ("seq_len", lambda: resolve_indices([1], NAN)),
    "resolve_indices-seq_len=1.5": ("seq_len", lambda: resolve_indices(None, 8.5)),
    # ---- operators (ess_reg/operators/) and their scans (ess_reg/kernels/scan/)
    "DenseOperator-causal_rtol=nan": ("causal_rtol", lambda: DenseOperator(torch.ones(L, L), causal_rtol=NAN)),
    "DenseOperator-causal_rtol=-1": ("causal_rtol", lambda: DenseOperator(dense(), causal_rtol=-1.0)),
    "DenseOperator-causal_rtol=str": ("causal_rtol", lambda: DenseOperator(dense(), causal_rtol="x")),
    "DenseOperator-causal_rtol=bool": ("causal_rtol", lambda: DenseOperator(torch.ones(L, L), causal_rtol=True)),
    "index_batch-index=float_tensor": ("index", lambda: ssm().index_batch(1, torch.tensor([0.5]))),
    "index_batch-index=str": ("index", lambda: DenseOperator(dense()).index_batch(1, "x")),
    "StateSpaceOperator.apply-chunk_size=1.5": ("chunk_size", lambda: ssm().apply(torch.ones(L, 2), chunk_size=1.5)),
    "StateSpaceOperator.apply-chunk_size=inf": ("chunk_size", lambda: ssm().apply(torch.ones(L, 2), chunk_size=INF)),
    "StateSpaceOperator.apply-chunk_size=bool": ("chunk_size", lambda: ssm().apply(torch.ones(L, 2), chunk_size=True)),
    "scan_apply-v=list": ("v", lambda: scan_apply(*ssm().factors(), [[1.0]])),
    # ---- diagnose (ess_reg/verdict.py)
    "growing_state_size-indices=0": ("indices", lambda: growing_state_size(torch.tensor([0, 2]), L)),
    "growing_state_size-indices=float_tensor": ("indices", lambda: growing_state_size(torch.tensor([1.0]), L)),
    "growing_state_size-seq_len=nan": ("seq_len", lambda: growing_state_size(torch.tensor([1, 2]), NAN)),
    "tss_at-seq_len=nan": ("seq_len", lambda: tss_at(4, [1, 2], NAN)),
    "tss_at-seq_len=-1": ("seq_len", lambda: tss_at(4, None, -1)),
    "reachable_state-tss=int": ("tss", lambda: reachable_state(3, torch.tensor([1, 2]), L)),
    "reachable_state-indices=list": ("indices", lambda: reachable_state(torch.tensor([3.0, 3.0]), [1, 2], L)),
    "reachable_state-seq_len=1.5": ("seq_len", lambda: reachable_state(torch.tensor(3.0), torch.tensor([1, 2]), 1.5)),
    "utilization-ess_per_index=wrong_shape":
        ("ess_per_index", lambda: utilization(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([2.0, 2.0]))),
    "utilization-reach=None": ("reach", lambda: utilization(torch.tensor([1.0, 2.0]), None)),
    "diagnose-accuracy=bool": ("accuracy", lambda: diagnose_reports(reports(), accuracy=True)),
    "diagnose-thresholds=int": ("thresholds", lambda: diagnose_reports(reports(), thresholds=3)),
    "diagnose-reports=not_reports": ("reports", lambda: diagnose_reports({"a": 3})),
    "model_summary-reports=list": ("reports", lambda: model_summary([])),
    "model_summary-reports=None": ("reports", lambda: model_summary(None)),
    "LayerReport.state_use-thresholds=str": ("thresholds", lambda: next(iter(reports().values())).state_use("x")),
    # ---- probe (ess_reg/probe.py)
    "measure-model=None": ("model", lambda: measure(None, tokens())),
    "measure-layers=empty": ("layers", lambda: measure(model(), tokens(), layers=[])),
    "measure-layers=str": ("layers", lambda: measure(model(), tokens(), layers="blocks.0.mixer")),
    "measure-layers=int": ("layers", lambda: measure(model(), tokens(), layers=3)),
    "measure-context_end=1.5": ("context_end", lambda: measure(model(), tokens(), context_end=1.5)),
    "measure-context_end=-1": ("context_end", lambda: measure(model(), tokens(), context_end=-1)),
    "measure-context_end=past_L": ("context_end", lambda: measure(model(), tokens(), context_end=100)),
    "measure-items_to_recall=0": ("items_to_recall", lambda: measure(model(), tokens(), items_to_recall=0)),
    "measure-memory_budget=nan": ("memory_budget", lambda: measure(model(), tokens(), memory_budget=NAN)),
    "ess_layers-model=int": ("model", lambda: ess_layers(3)),
    "ess_layers-names=empty": ("names", lambda: ess_layers(model(), [])),
    "capture_operators-model=None": ("model", lambda: capture_operators(None)),
    "capture_operators.operators-batch_limit=0": ("batch_limit", lambda: captured_operators(batch_limit=0)),
    "register_adapter-cls=int": ("cls", lambda: register_adapter(3, Adapter(lambda m, x: None, lambda m: 1))),
    "register_adapter-adapter=None": ("adapter", lambda: register_adapter(type("Foo", (), {}), None)),
    # ---- penalty (ess_reg/penalty.py)
    "ESSPenalty-seed=1.5": ("seed", lambda: ESSPenalty(model(), seed=1.5)),
    "ESSPenalty-seed=-1": ("seed", lambda: ESSPenalty(model(), seed=-1)),
    "ESSPenalty-seed=bool": ("seed", lambda: ESSPenalty(model(), seed=True)),
    "ESSPenalty-seed=None": ("seed", lambda: ESSPenalty(model(), seed=None)),
    "ESSPenalty-model=None": ("model", lambda: ESSPenalty(None)),
    "ESSPenalty-layers=empty": ("layers", lambda: ESSPenalty(model(), layers=[])),
    "ESSPenalty-task=int": ("task", lambda: ESSPenalty(model(), task=3)),
    "ESSPenalty-indices=float_list": ("indices", lambda: ESSPenalty(model(), indices=[1.5])),
    "ESSPenalty-indices=empty": ("indices", lambda: ESSPenalty(model(), indices=[])),
    "ESSPenalty-indices=0": ("indices", lambda: ESSPenalty(model(), indices=[0, 5])),
    "ESSPenalty-indices=unknown": ("indices", lambda: ESSPenalty(model(), indices="middle")),
    "ESSPenalty-context_end=str": ("context_end", lambda: ESSPenalty(model(), indices="context_end",
                                                                     task=task_info(context_end="x"))),
    "ESSPenalty-context_end=past_L":
        ("context_end", lambda: ESSPenalty(model(), indices="context_end", task=task_info(context_end=100))(tokens())),
    "ESSPenalty-items_to_recall=-1":
        ("items_to_recall", lambda: ESSPenalty(model(), task=task_info(items_to_recall=-1))),
    "ESSPenalty-tol=nan": ("tol", lambda: ESSPenalty(model(), kind="soft_tolerance", ess_options={"tol": NAN})),
    "ESSPenalty-temperature=0":
        ("temperature", lambda: ESSPenalty(model(), kind="soft_tolerance", ess_options={"temperature": 0})),
    "ESSPenalty-ess_options=unknown": ("ess_options", lambda: ESSPenalty(model(), ess_options={"tol": 1e-3})),
    "ESSPenalty-objective=unknown": ("objective", lambda: ESSPenalty(model(), objective="balance")),
    "ESSPenalty-measure=unknown": ("measure", lambda: ESSPenalty(model(), measure="rank")),
    "ESSPenalty-measure=per_item_random":
        ("per_item", lambda: ESSPenalty(model(), measure="per_item", task=task_info())),
    "ESSPenalty-schedule=str": ("schedule", lambda: ESSPenalty(model(), schedule="x")),
    "ESSPenalty-budget=dict": ("budget", lambda: ESSPenalty(model(), budget={"batch_limit": 2})),
    "Target-value=bool": ("target", lambda: Target(True)),
    "Target-value=str": ("target", lambda: Target("x")),
    "Target-hinge=unknown": ("hinge", lambda: Target(0.5, hinge="bogus")),
    "Schedule-weight=-1": ("weight", lambda: Schedule(-1.0)),
    "Schedule-weight=nan": ("weight", lambda: Schedule(NAN)),
    "Schedule-ramp_steps=1.5": ("ramp_steps", lambda: Schedule(1.0, ramp_steps=1.5)),
    "Schedule.weight_at-step=nan": ("step", lambda: Schedule(1.0, ramp_steps=4).weight_at(NAN)),
    "Schedule.weight_at-step=1.5": ("step", lambda: Schedule(1.0, ramp_steps=4).weight_at(1.5)),
    "Budget-channel_limit=0": ("channel_limit", lambda: Budget(channel_limit=0)),
    "Budget-batch_limit=1.5": ("batch_limit", lambda: Budget(batch_limit=1.5)),
    "RandomIndices-count=0": ("count", lambda: RandomIndices(0)),
    "EvenIndices-count=bool": ("count", lambda: EvenIndices(True)),
    "DecayIdentityPenalty-model=int": ("model", lambda: DecayIdentityPenalty(3)),
    "DecayIdentityPenalty-task=int": ("task", lambda: DecayIdentityPenalty(model(), task=3)),
    # ---- init search (ess_reg/init_search.py)
    "select_init-candidates=seed_float": ("seed", lambda: select_init(lambda c: model(), [{"seed": 1.5}], tokens())),
    "select_init-candidates=seed_bool": ("seed", lambda: select_init(lambda c: model(), [{"seed": True}], tokens())),
    "select_init-candidates=seed_nan": ("seed", lambda: select_init(lambda c: model(), [{"seed": NAN}], tokens())),
    "select_init-candidates=empty": ("candidates", lambda: select_init(lambda c: model(), [], tokens())),
    "select_init-candidates=None": ("candidates", lambda: select_init(lambda c: model(), None, tokens())),
    "select_init-factory=None": ("factory", lambda: select_init(None, [{}], tokens())),
    "select_init-factory=returns_int": ("factory", lambda: select_init(lambda c: 3, [{}], tokens())),
    "select_init-score=int": ("score", lambda: select_init(lambda c: model(), [{}], tokens(), score=3)),
    "select_init-on_candidate=int": ("on_candidate", lambda: select_init(lambda c: model(), [{}], tokens(),
                                                                         on_candidate=3)),
    "select_init-context_end=-1": ("context_end", lambda: select_init(lambda c: model(), [{}], tokens(),
                                                                      context_end=-1)),
    # ---- tasks (ess_reg/tasks/)
    "MQAR-power_a=str": ("power_a", lambda: MQAR(vocab_size=64, seq_len=32, num_kv_pairs=4, power_a="x")),
    "MQAR-power_a=bool": ("power_a", lambda: MQAR(vocab_size=64, seq_len=32, num_kv_pairs=4, power_a=True)),
    "MQAR.generate-seed=1.5": ("seed", lambda: mqar().generate(2, seed=1.5)),
    "MQAR.generate-seed=-1": ("seed", lambda: mqar().generate(2, seed=-1)),
    "MQAR.generate-seed=bool": ("seed", lambda: mqar().generate(2, seed=True)),
    "MQAR.generate-seed=2**70": ("seed", lambda: mqar().generate(2, seed=2**70)),
    "SelectiveCopy.generate-seed=1.5": ("seed", lambda: SelectiveCopy(seq_len=32, num_tokens=4).generate(2, seed=1.5)),
    "Compression.generate-seed=str": ("seed", lambda: Compression(seq_len=16).generate(2, seed="x")),
    "train_batch-batch_size=0": ("batch_size", lambda: mqar().train_batch(0, step=0)),
    "train_batch-batch_size=1.5": ("batch_size", lambda: mqar().train_batch(1.5, step=0)),
    "train_batch-step=1.5": ("step", lambda: mqar().train_batch(2, step=1.5)),
    "train_batch-step=bool": ("step", lambda: mqar().train_batch(2, step=True)),
    "train_batch-seed=1.5": ("seed", lambda: mqar().train_batch(2, step=0, seed=1.5)),
    "train_batch-seed=too_large": ("seed", lambda: mqar().train_batch(2, step=0, seed=2**62)),
    "test_set-seed=1.5": ("seed", lambda: mqar().test_set(2, seed=1.5)),
    "test_set-seed=None": ("seed", lambda: mqar().test_set(2, seed=None)),
}


@pytest.mark.parametrize("name, call", list(CASES.values()), ids=list(CASES))
def test_bad_argument_is_named(name, call):
    with pytest.raises((ValueError, TypeError), match=name):
        call()


def test_empty_batch_gives_empty_spectra():
    # Was `torch.cat(): expected a non-empty list` on the dense path; the state-space path gave this.
    for method in ("dense", "loop"):
        assert hankel_svdvals(torch.zeros(0, 3, L, L), [2, 4], method=method).shape == (0, 3, 2, 4)


def test_valid_edge_values_still_pass():
    # Limits that are legal stay legal: a float byte budget, an infinite causal_rtol (no causal
    # check), a tensor of indices for the penalty (was refused at the first forward pass), a zero
    # target, step 0, an integer ESS tensor.
    assert hankel_svdvals(dense(), memory_budget=1e9).shape == (2, 3, L - 1, L // 2)
    assert DenseOperator(torch.ones(L, L), causal_rtol=INF).seq_len == L
    penalty = ESSPenalty(model(), Target(0), 1.0, indices=torch.tensor([2, 5]))
    assert math.isfinite(penalty(tokens(), step=0).item())
    assert total_ess(torch.ones(2, 3, 4, dtype=torch.long), multiplicity=2).tolist() == [[6] * 4] * 2
