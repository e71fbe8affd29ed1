"""ess_reg.environment: what a run or a bench records about the machine it ran on."""

import torch

from ess_reg import environment


def test_a_cpu_device_names_no_gpu_and_never_touches_cuda(monkeypatch):
    def no_cuda(*args, **kwargs):
        raise AssertionError("a CPU run must not start a CUDA context")

    monkeypatch.setattr(torch.cuda, "get_device_name", no_cuda)
    described = environment.machine("cpu")
    assert described["gpu"] == "none"
    assert described["torch"] == torch.__version__ and described["threads"] == torch.get_num_threads()
    assert described["cpu"] == environment.cpu_name() and described["cpu"]


def test_a_cuda_device_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: f"card {torch.device(device)}")
    assert environment.machine("cuda:1")["gpu"] == "card cuda:1"
