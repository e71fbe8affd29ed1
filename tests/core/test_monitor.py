"""ESSMonitor: ESS every k steps of a hand-written loop, handed to any logger."""

import pytest
import torch

from ess_reg import ESSMonitor, measure
from ess_reg.tasks import MQAR

from factories import lm


def test_the_monitor_measures_every_k_steps_and_hands_the_figures_to_the_logger():
    task = MQAR(vocab_size=32, seq_len=24, num_kv_pairs=2)
    model = lm("gla", n_layers=2)
    probe = task.test_set(4, seed=1).inputs
    logged = []
    monitor = ESSMonitor(model, probe, every=3, log=lambda metrics, step: logged.append((step, metrics)), task=task)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for step in range(7):
        batch = task.train_batch(4, step)
        loss = torch.nn.functional.cross_entropy(model(batch.inputs).flatten(0, 1), batch.labels.flatten(),
                                                 ignore_index=-100)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        monitor(step)
    assert [s for s, _ in logged] == [0, 3, 6]
    assert model.training  # put back as it was
    step6 = logged[-1][1]
    assert {"ess/util", "ess/per_kv", "L0/util", "L1/util", "L0/per_kv"} <= step6.keys()
    # The same numbers a one-off measurement of the trained model gives on the same batch.
    model.eval()
    again = measure(model, probe, indices=monitor.probe.indices, task=task)
    assert step6["L1/util"] == pytest.approx(again["blocks.1.mixer"].utilization, rel=1e-5)
    assert monitor.verdict is not None and monitor.verdict.mode in ("collapse", "near collapse", "inconclusive",
                                                                     "saturation", "near saturation", "healthy")


def test_the_monitor_refuses_what_it_cannot_use():
    model = lm("gla")
    with pytest.raises(ValueError, match="every"):
        ESSMonitor(model, torch.zeros(2, 8, dtype=torch.long), every=0)
    with pytest.raises(TypeError, match="log must be a function"):
        ESSMonitor(model, torch.zeros(2, 8, dtype=torch.long), log="mlflow")
    with pytest.raises(ValueError, match="inputs must be a batch"):
        ESSMonitor(model, torch.zeros(2, 1, dtype=torch.long))
