"""Distillation mode: a student trains on a frozen teacher's outputs (ess_reg.harness.distill)."""

import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient

from ess_reg.harness import plan as plan_module
from ess_reg.harness.ess_train import ConfigError, compose_config, prepare, run
from ess_reg.harness.checkpoints import load_checkpoint
from ess_reg.harness.distill import DistillSettings, distillation_loss


def history(client, run_id, key):
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_distillation_loss_is_the_tempered_kl_at_the_masked_positions():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 7, dtype=torch.float64), torch.randn(2, 5, 7, dtype=torch.float64)
    mask = torch.tensor([[True, False, True, False, False], [False, False, False, True, True]])
    for T in (1.0, 2.5):
        p = F.softmax(teacher[mask] / T, -1)
        by_hand = (p * (p.log() - F.log_softmax(student[mask] / T, -1))).sum(-1).mean() * T**2
        assert distillation_loss(student, teacher, mask, T).item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert distillation_loss(teacher, teacher, mask).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("node, message", [
    ({"teacher": "x", "weight": 1.5}, "distill.weight must be in [0, 1]"),
    ({"teacher": "x", "temperature": 0}, "distill.temperature must be a finite number > 0"),
    ({"teacher": "x", "positions": "keys"}, "distill.positions must be one of"),
    ({"teacher": "x", "temprature": 2}, "distill: unknown keys ['temprature']"),
])
def test_bad_distill_settings_are_named(node, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        DistillSettings.from_config(node)


def test_a_student_learns_from_a_frozen_teacher(store, tiny, monkeypatch):
    teacher_run = run(compose_config(tiny("trainer.max_steps=40", "model.d_model=32")))
    loaded = []
    original = plan_module.Teacher.load

    def keep(*args, **kwargs):
        loaded.append(original(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(plan_module.Teacher, "load", keep)
    student = run(compose_config(tiny("distill=teacher", f"distill.teacher={teacher_run.run_id}",
                                      "model.state_size=4", "trainer.max_steps=40", "trainer.eval_every=20",
                                      "distill.temperature=2.0")))
    client = MlflowClient(store["uri"])
    r = client.get_run(student.run_id)
    assert r.info.status == "FINISHED"
    assert r.data.tags["distill.teacher_run"] == teacher_run.run_id and r.data.tags["distill.teacher_mixer"] == "gla"
    # The held-out distillation loss falls as the student learns.
    gap = history(client, student.run_id, "valid/distill_kl")
    assert len(gap) == 3 and gap[-1] < 0.8 * gap[0]
    # The teacher's accuracy is logged once, and is its own run's final accuracy (same held-out set).
    assert history(client, student.run_id, "teacher/valid/accuracy") == [
        pytest.approx(client.get_run(teacher_run.run_id).data.metrics["valid/accuracy"], abs=1e-12)]
    assert "teacher/L0/per_kv" in r.data.metrics
    # The teacher stayed frozen: no gradient, eval mode, its weights equal to its checkpoint.
    teacher = loaded[0]
    assert not teacher.training and not teacher.model.training
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    stored = load_checkpoint(teacher_run.checkpoint)["model"]
    for name, value in teacher.model.state_dict().items():
        assert torch.equal(value.cpu(), stored[name]), name


def test_a_teacher_with_another_vocabulary_or_none_at_all_is_refused_before_the_run(store, tiny):
    teacher_run = run(compose_config(tiny()))
    with pytest.raises(ConfigError, match="distill.teacher=.*vocabulary is 128, the student's task has 256"):
        prepare(compose_config(tiny("distill=teacher", f"distill.teacher={teacher_run.run_id}",
                                    "task.vocab_size=256")))
    short = run(compose_config(tiny("model.max_len=32", "task.seq_len=32", "seed=1")))  # positions up to 32
    with pytest.raises(ConfigError, match="learned positions up to 32 tokens, the student's task has sequences of 64"):
        prepare(compose_config(tiny("distill=teacher", f"distill.teacher={short.run_id}")))
    with pytest.raises(ConfigError, match=r"was trained on another task \(differs in task.num_kv_pairs: 4 vs 2\); "
                                          "add distill.other_task=true"):
        prepare(compose_config(tiny("distill=teacher", f"distill.teacher={teacher_run.run_id}", "task.num_kv_pairs=2")))
    plan = prepare(compose_config(tiny("distill=teacher", f"distill.teacher={teacher_run.run_id}",
                                       "task.num_kv_pairs=2", "distill.other_task=true")))
    assert plan.teacher is not None
    with pytest.raises(ConfigError, match="distill.teacher=nope: neither a checkpoint file nor a run id"):
        prepare(compose_config(tiny("distill=teacher", "distill.teacher=nope")))
    with pytest.raises(ConfigError, match="distill.teacher"):
        prepare(compose_config(tiny("distill=teacher")))
    assert len(MlflowClient(store["uri"]).search_runs(
        [MlflowClient(store["uri"]).get_experiment_by_name("ess-reg").experiment_id])) == 2  # the two teachers
