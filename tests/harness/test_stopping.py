"""trainer.stop: where a rule on the validation curve ends a run, read live and from a logged curve."""

import pytest

from ess_reg.harness.stopping import StopRule, stop_point

# A plateau at chance, a take-off at step 300, a plateau near 0.8 from step 500.
CURVE = [(0, 0.03), (100, 0.03), (200, 0.035), (300, 0.2), (400, 0.6), (500, 0.8), (600, 0.805), (700, 0.81),
         (800, 0.805), (900, 0.81)]


def test_a_target_stops_at_the_first_evaluation_that_reaches_it():
    assert stop_point(CURVE, StopRule(target=0.6)) == (400, "accuracy 0.600 reached the target 0.6")
    assert stop_point(CURVE, StopRule(target=0.9)) is None  # never reached: the budget ends the run


def test_patience_counts_steps_since_the_best_last_rose_by_min_delta():
    # The best rises at 300, 400, 500; 600-900 gain less than 0.05 over 0.8: 300 steps after 500 is 800.
    step, reason = stop_point(CURVE, StopRule(patience=300, min_delta=0.05))
    assert step == 800 and "for 300 steps (best 0.800)" in reason
    # With a patience shorter than the plateau at chance the rule stops a run that would have
    # learned: the first point counts as a rise, 0.035 is no gain of 0.05, so step 200.
    assert stop_point(CURVE, StopRule(patience=200, min_delta=0.05))[0] == 200
    # A small min_delta counts 0.035 and 0.81 as gains: the plateau is counted from 700.
    assert stop_point(CURVE, StopRule(patience=300, min_delta=0.005)) is None
    assert StopRule(target=0.6, patience=300).reason(CURVE[:3]) is None  # both rules, neither met at 200


def test_no_rule_never_stops():
    assert not StopRule().active and stop_point(CURVE, StopRule()) is None


@pytest.mark.parametrize("kwargs, message", [
    ({"target": 1.5}, "trainer.stop.target must be an accuracy in (0, 1]"),
    ({"target": 0}, "trainer.stop.target"),
    ({"patience": 0}, "trainer.stop.patience must be a positive number of steps"),
    ({"patience": 2.5}, "trainer.stop.patience"),
    ({"min_delta": -0.1}, "trainer.stop.min_delta must be a number >= 0"),
    ({"min_delta": float("nan")}, "trainer.stop.min_delta"),
])
def test_bad_rules_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        StopRule(**kwargs)
