"""ESS in a Hugging Face Trainer: the penalty in its loss, ESS in its evaluation logs (read back
from a real MLflow store through the Trainer's own MLflow logger), gradient accumulation."""

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments  # noqa: E402

from ess_reg import ESSMonitor, ESSPenalty  # noqa: E402
from ess_reg.integrations.hf_trainer import ESSTrainer  # noqa: E402

L = 16


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=L)
    return LlamaForCausalLM(config).eval().train()  # eager attention: the probe reads its probabilities


def dataset(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(64, (n, L), generator=g)
    return [{"input_ids": row, "labels": row} for row in ids]


def args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), max_steps=1, learning_rate=0.5, optim="sgd", weight_decay=0.0,
                per_device_train_batch_size=4, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
                logging_steps=1, lr_scheduler_type="constant", max_grad_norm=0.0, seed=0, data_seed=0)
    base.update(kw)
    return TrainingArguments(**base)


def attn_implementation_eager(model):
    model.config._attn_implementation = "eager"
    return model


def gradients_without_and_with(model, penalty, batch, parameter, tmp_path):
    """A Trainer without and one with ``penalty``, and ``parameter``'s gradient of each one's
    training loss on ``batch``."""
    plain = ESSTrainer(model=model, args=args(tmp_path), train_dataset=dataset())
    trainer = ESSTrainer(model=model, args=args(tmp_path), train_dataset=dataset(), ess_penalty=penalty)
    grads = []
    for t in (plain, trainer):
        model.zero_grad()
        t.compute_loss(model, batch).backward()
        grads.append(parameter.grad.clone())
    return plain, trainer, grads


def test_the_trainer_logs_ess_at_each_evaluation_into_mlflow(tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)  # as in a fresh process: a store another test of this worker set is not this one
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "hf-trainer")
    model = attn_implementation_eager(tiny_llama())
    data = dataset()
    probe = torch.stack([d["input_ids"] for d in data[:2]])
    trainer = ESSTrainer(model=model, args=args(tmp_path, max_steps=4, eval_strategy="steps", eval_steps=2,
                                                report_to=["mlflow"]),
                         train_dataset=data, eval_dataset=data[:4],
                         ess_penalty=ESSPenalty(model, schedule=0.1, indices=[4, 8, 12]),
                         ess_monitor=ESSMonitor(model, probe))
    trainer.train()
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("hf-trainer").experiment_id])
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "ess/util")]
    assert steps == [2, 4]  # one measurement per evaluation, at the Trainer's global step
    assert client.get_metric_history(run.info.run_id, "L0/util")[-1].value == trainer.ess_monitor.last["L0/util"]
    assert "eval_loss" in run.data.metrics  # beside the Trainer's own figures


def test_the_penalty_reaches_the_attention_weights_only_in_training(tmp_path):
    model = attn_implementation_eager(tiny_llama())
    batch = {k: torch.stack([d[k] for d in dataset()[:4]]) for k in ("input_ids", "labels")}
    penalty = ESSPenalty(model, schedule=1.0, indices=[4, 8, 12])
    plain, trainer, grads = gradients_without_and_with(model, penalty, batch,
                                                       model.model.layers[0].self_attn.q_proj.weight, tmp_path)
    assert penalty.last["value"] != 0 and not torch.allclose(grads[0], grads[1])
    model.eval()
    with torch.no_grad():  # evaluation: the Trainer's own loss, no penalty
        assert trainer.compute_loss(model, batch).item() == pytest.approx(plain.compute_loss(model, batch).item())


def test_gradient_accumulation_gives_the_step_of_the_whole_batch(tmp_path):
    data = dataset(n=4)
    updated = []
    for batch_size, accumulate in ((4, 1), (2, 2)):
        model = attn_implementation_eager(tiny_llama())
        trainer = ESSTrainer(model=model, args=args(tmp_path, per_device_train_batch_size=batch_size,
                                                    gradient_accumulation_steps=accumulate),
                             train_dataset=data, ess_penalty=ESSPenalty(model, schedule=1.0, indices=[4, 8, 12]))
        trainer.train()
        updated.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(updated[0], updated[1], rtol=1e-4, atol=1e-6)


def test_the_penalty_reaches_a_mamba2_s_mixer_through_the_trainer(tmp_path):
    torch.manual_seed(0)
    model = transformers.Mamba2ForCausalLM(transformers.Mamba2Config(
        vocab_size=64, hidden_size=32, state_size=8, num_heads=4, head_dim=16, expand=2, n_groups=1,
        num_hidden_layers=1, chunk_size=16)).train()
    batch = {k: torch.stack([d[k] for d in dataset()[:4]]) for k in ("input_ids", "labels")}
    penalty = ESSPenalty(model, schedule=1.0, indices=[4, 8, 12])
    a_log = model.backbone.layers[0].mixer.A_log  # the decays: what the state-space operator is built from
    _, _, grads = gradients_without_and_with(model, penalty, batch, a_log, tmp_path)
    assert penalty.last["value"] != 0 and not torch.allclose(grads[0], grads[1])
