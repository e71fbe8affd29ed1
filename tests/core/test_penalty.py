import pytest
import torch
from torch import nn

from ess_reg import StateSpaceOperator, entropy_ess
from ess_reg.init_search import select_init
from ess_reg.probe import measure
from ess_reg.indices import RandomIndices
from ess_reg.penalty import Budget, Constraint, DecayIdentityPenalty, ESSPenalty, Schedule, Target
from ess_reg.tasks import MQAR
from ess_reg.models.lm import LanguageModel

from factories import lm, tokens


@pytest.mark.parametrize("mixer", ["gla", "s6", "sa"])
def test_penalty_is_differentiable_and_reaches_every_mixer(mixer):
    model = lm(mixer)
    penalty = ESSPenalty(model, schedule=1.0, indices="all")
    with penalty.capture():
        model(tokens())
    penalty.compute().backward()
    for name, block in enumerate(model.blocks):
        grads = [p.grad for n, p in block.mixer.named_parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), f"no gradient reached block {name}"
        assert all(g is None or torch.isfinite(g).all() for g in grads)


def test_finite_gradients_with_rank_deficient_blocks():
    # Indices 1 and L-1 are rank-1 blocks in a state of 8; an all-zero input stream makes more.
    model = lm("s6")
    penalty = ESSPenalty(model, schedule=1.0, indices=[1, 2, 22, 23])
    x = torch.zeros(2, 24, dtype=torch.long)
    penalty(x).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def optimize(model, penalty, steps=40, lr=1e-2, x=None):
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    x = tokens() if x is None else x
    history = []
    for step in range(1, steps + 1):  # training steps count from 1
        loss = penalty(x, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(penalty.last["measure"])
    return history


@pytest.mark.parametrize("mixer", ["gla", "s6"])
def test_maximize_raises_and_minimize_lowers_utilization(mixer):
    up = optimize(model := lm(mixer), ESSPenalty(model, "maximize", 1.0, indices="all"))
    down = optimize(model := lm(mixer), ESSPenalty(model, "minimize", 1.0, indices="all"))
    assert up[-1] > up[0] + 0.05
    assert down[-1] < down[0] - 0.05


@pytest.mark.parametrize("target", [0.05, 0.8])
def test_target_moves_toward_the_target_from_both_sides(target):
    model = lm("gla")
    history = optimize(model, ESSPenalty(model, Target(target), 1.0, indices="all"), steps=60)
    assert abs(history[-1] - target) < 0.5 * abs(history[0] - target)


def test_one_sided_hinge_ignores_the_other_side():
    model = lm("gla")
    penalty = ESSPenalty(model, Target(0.0, hinge="below"), 1.0, indices="all")
    assert penalty(tokens()).item() == 0.0  # utilization is above 0: nothing to pull up


def test_context_end_and_per_item_targets_read_the_task():
    task = MQAR(vocab_size=32, seq_len=24, num_kv_pairs=3)
    model = lm("gla")
    penalty = ESSPenalty(model, Target(1.0), 1.0, measure="per_item", indices="context_end", task=task)
    x = task.test_set(4).inputs
    value = penalty(x)
    assert penalty.probe.context_end == 6 and penalty.probe.items_to_recall == 3
    # The same number the diagnostics report as ESS/kv, through the same probe.
    reports = measure(model, x, [6], context_end=6, items_to_recall=3, dtype=torch.float32)
    per_kv = sum(r.ess_per_item for r in reports.values()) / len(reports)
    assert abs(penalty.last["measure"] - per_kv) < 1e-6 and value.item() == pytest.approx((per_kv - 1.0) ** 2)


def test_a_constraint_holds_its_bound_and_switches_itself_off():
    """A toy problem with a known answer: minimize (x - a)^2 subject to x >= 0.5. For a = 0 the
    bound binds: x -> 0.5 and the multiplier -> 2 (0.5 - 0) = 1 (the KKT point). For a = 0.8 it
    holds by itself: the multiplier, pushed up while x starts below the bound, returns to 0."""
    for a, x_end, multiplier_end in ((0.0, 0.5, 1.0), (0.8, 0.8, 0.0)):
        x = torch.zeros((), requires_grad=True)
        constraint = Constraint(0.5, dual_lr=0.5)
        optimizer = torch.optim.SGD([x], lr=0.05)
        multipliers = []
        for _ in range(3000):
            loss = (x - a) ** 2 + constraint(x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            constraint.step()
            multipliers.append(constraint.multiplier)
        assert x.item() == pytest.approx(x_end, abs=1e-3)
        assert constraint.multiplier == pytest.approx(multiplier_end, abs=1e-3)
        assert max(multipliers[:20]) > 0  # it rose while x was below the bound, in both cases
    upper = Constraint(0.2, bound="upper")
    assert upper.violation(torch.tensor(0.5)).item() == pytest.approx(0.3)  # measure 0.5 > 0.2: violated
    with pytest.raises(ValueError, match="bound must be"):
        Constraint(0.5, bound="below")
    with pytest.raises(ValueError, match="dual_lr"):
        Constraint(0.5, dual_lr=0)


def test_an_ess_constraint_rises_while_violated_and_stays_off_when_met():
    model = lm("gla")
    unreachable = ESSPenalty(model, Constraint(1.0, dual_lr=0.1), 1.0, indices="all")  # utilization never reaches 1
    met = ESSPenalty(model, Constraint(0.0, dual_lr=0.1), 1.0, indices="all")          # always holds
    x = tokens()
    rising = []
    for step in range(1, 6):
        unreachable(x, step).backward()
        met(x, step)
        unreachable.after_step()
        met.after_step()
        rising.append(unreachable.objective.multiplier)
    assert all(b > a for a, b in zip(rising, rising[1:])) and rising[0] > 0
    assert met.objective.multiplier == 0.0 and met.last["value"] == 0.0
    assert unreachable.last["multiplier"] == pytest.approx(rising[-2])  # logged: the multiplier the step used
    # check() measures without moving the multiplier; the state round-trips through a checkpoint
    before = unreachable.objective.multiplier
    unreachable.check(x[:2])
    assert unreachable.objective.multiplier == before
    copy = ESSPenalty(model, Constraint(1.0, dual_lr=0.1), 1.0, indices="all")
    copy.load_penalty_state(unreachable.penalty_state())
    assert copy.objective.multiplier == before
    unreachable.after_step()  # no measurement since the last step: nothing to ascend on
    assert unreachable.objective.multiplier == before


def test_weight_schedule():
    penalty = ESSPenalty(lm("gla"), schedule=Schedule(2.0, warmup_steps=10, ramp_steps=4))
    assert [penalty.weight_at(s) for s in (1, 10, 11, 12, 14, 100)] == [0.0, 0.0, 0.5, 1.0, 2.0, 2.0]
    early = Schedule(1.0, until_step=50)  # early only
    assert [early.weight_at(s) for s in (1, 50, 51, 1000)] == [1.0, 1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="until_step=5 ends the term before its warm-up"):
        Schedule(1.0, warmup_steps=10, until_step=5)
    assert penalty(tokens(), step=5).item() == 0.0 and penalty.last == {"weight": 0.0}  # no spectra in warm-up


def test_random_indices_are_reproducible():
    a, b = ESSPenalty(lm("gla"), seed=3), ESSPenalty(lm("gla"), seed=3)
    drawn = [p.probe.indices(64, None, p.probe.generator) for p in (a, b)]
    assert torch.equal(*drawn) and len(drawn[0]) == 8 and isinstance(a.probe.indices, RandomIndices)
    assert not torch.equal(a.probe.indices(64, None, a.probe.generator), drawn[0])  # fresh at every step


@pytest.mark.parametrize("mixer", ["gla", "s6"])  # s6 hands over an operator builder
def test_decay_identity_pulls_decays_toward_one(mixer):
    model = lm(mixer)
    penalty = DecayIdentityPenalty(model, schedule=1.0)
    history = optimize(model, penalty, steps=30, lr=5e-2)
    assert history[-1] < 0.5 * history[0]
    with pytest.raises(ValueError, match="needs state-space layers"):
        DecayIdentityPenalty(lm("sa"))(tokens())


class LearnedDecay(nn.Module):
    """A user's own recurrence (not from the zoo): x_i = a x_{i-1} + B u_i, learned a and B."""

    def __init__(self, d, n=4):
        super().__init__()
        self.logit = nn.Parameter(torch.zeros(d, n))
        self.B = nn.Parameter(torch.randn(d, n))
        self.C = nn.Parameter(torch.randn(d, n))

    def operator(self, x):
        b, length, d = x.shape
        shape = (b, d, length, self.B.shape[1])
        log_decay = torch.nn.functional.logsigmoid(self.logit)[None, :, None, :].expand(shape)
        return StateSpaceOperator(log_decay, (self.B[None, :, None, :] * x.transpose(1, 2)[..., None]).expand(shape),
                                  self.C[None, :, None, :].expand(shape))

    def forward(self, x):
        op = self.operator(x)
        return op.apply(torch.ones(*op.batch_shape, x.shape[1], 1)).squeeze(-1).transpose(1, 2)

    def state_size(self):
        return self.B.shape[1]


def test_users_own_model_works_with_penalty_and_init_search():
    torch.manual_seed(0)
    model = nn.Sequential(LearnedDecay(3))
    x = torch.randn(2, 16, 3)
    history = optimize(model, ESSPenalty(model, "maximize", 1.0, indices="all"), steps=20, x=x)
    assert history[-1] > history[0]
    result = select_init(lambda c: nn.Sequential(LearnedDecay(3)), [{"seed": s} for s in range(4)], x)
    assert result.scores[result.index] == max(result.scores)


def test_select_init_picks_the_best_and_is_deterministic():
    candidates = [{"seed": s, "a_init": a} for s in (0, 1) for a in ("s4d_real", "constant", "uniform")]
    factory = lambda c: LanguageModel(32, 16, 1, "s6", {"d_state": 8, "a_init": c["a_init"]})  # noqa: E731
    x = tokens()
    first = select_init(factory, candidates, x)
    second = select_init(factory, candidates, x)
    assert first.scores == second.scores and first.candidate == second.candidate
    assert first.scores[first.index] == max(first.scores) and len(set(first.scores)) > 1
    worst = select_init(factory, candidates, x, maximize=False)
    assert worst.scores[worst.index] == min(first.scores)
    assert [row["chosen"] for row in first.rows()].count(True) == 1
    assert first.table().count("<- chosen") == 1 and str(first.candidate) in first.table()  # printable


def test_channel_limit_averages_a_random_subset_of_channels():
    model = lm("s6")  # 2 x 16 = 32 channels per layer, TSS 8
    x = tokens()
    full = ESSPenalty(model, schedule=1.0, indices=[5, 12])
    full(x)
    sampled = ESSPenalty(model, schedule=1.0, indices=[5, 12], budget=Budget(channel_limit=4), seed=3)
    value = sampled(x)
    picked = list(sampled.probe.channels.values())  # the channels drawn, per layer
    assert [len(p) for p in picked] == [4, 4] and not torch.equal(picked[0], picked[1])
    # The same number as the exact penalty on the picked channels, taken from the full operators.
    with full.capture():
        model(x)
    ops = full.probe.operators()
    idx = torch.tensor([5, 12])
    reach = torch.minimum(torch.minimum(idx, x.shape[1] - idx), torch.tensor(8))  # min(i, L - i, TSS)
    exact = torch.stack([
        entropy_ess(op.index_batch(1, channels), idx, dtype=torch.float32).reshape(-1, 2).mean(0).sum() / reach.sum()
        for op, channels in zip(ops.values(), picked)
    ]).mean()
    assert torch.allclose(-value, exact)
    assert abs(sampled.last["measure"] - full.last["measure"]) < 0.5  # an estimate of the same mean
    value.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_channel_limit_picks_heads_of_dense_layers_too():
    model = lm("sa", num_heads=4)
    penalty = ESSPenalty(model, schedule=1.0, indices=[5], budget=Budget(channel_limit=2))
    with penalty.capture():
        model(tokens())
    assert all(op.batch_shape[1] == 2 for op in penalty.probe.operators().values())


def test_index_batch_selects_operator_channels():
    g = torch.Generator().manual_seed(0)
    log_decay = -torch.rand(1, 5, 7, 3, generator=g)  # shared by the batch: stays shared
    B, C = torch.randn(2, 5, 7, 3, generator=g), torch.randn(2, 5, 7, 3, generator=g)
    op = StateSpaceOperator(log_decay, B, C)
    picked = op.index_batch(1, torch.tensor([4, 1]))
    assert picked.batch_shape == (2, 2)
    assert torch.allclose(picked.materialize(), op.materialize()[:, [4, 1]])
    with pytest.raises(ValueError, match="index must be"):
        op.index_batch(1, torch.tensor([5]))
    with pytest.raises(ValueError, match="batch dims"):
        op.index_batch(2, torch.tensor([0]))


def test_bad_arguments():
    model = lm("gla")
    with pytest.raises(ValueError, match="channel_limit"):
        ESSPenalty(model, budget=Budget(channel_limit=0))
    with pytest.raises(ValueError, match="unknown objective"):
        ESSPenalty(model, objective="balance")
    with pytest.raises(ValueError, match="weight must be a finite number >= 0"):
        ESSPenalty(model, schedule=-1.0)
    with pytest.raises(ValueError, match=r"1\.\.L-1"):
        ESSPenalty(model, indices=[0, 5])(tokens())
    with pytest.raises(ValueError, match="unknown indices"):
        ESSPenalty(model, indices="middle")
    with pytest.raises(TypeError, match="value"):
        Target()
    with pytest.raises(ValueError, match="reads ESS at the end of the context"):
        ESSPenalty(model, measure="per_item", task=MQAR(vocab_size=32, seq_len=24, num_kv_pairs=3))
    with pytest.raises(ValueError, match="needs context_end"):
        ESSPenalty(model, indices="context_end")
    with pytest.raises(ValueError, match="differentiable"):
        ESSPenalty(model, kind="tolerance")
    with pytest.raises(ValueError, match="no ESS-capable layer"):
        ESSPenalty(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="no ESS-capable layer"):
        select_init(lambda c: nn.Linear(3, 3), [{}], torch.randn(1, 4, 3))
    with pytest.raises(ValueError, match="unknown score"):
        select_init(lambda c: lm("gla"), [{}], tokens(), score="best")
    with pytest.raises(ValueError, match="at least one candidate"):
        select_init(lambda c: lm("gla"), [], tokens())
