"""Data-parallel training with ``torch.distributed``, launched by ``torchrun``:

    torchrun --nproc_per_node=2 -m ess_reg.harness.ess_train trainer.batch_size=64   # 32 examples per process

Every process builds the same model under the same seed and draws the same global batch;
process ``r`` trains on its slice ``r`` of it, and the gradients are averaged (gloo on CPU,
NCCL on GPU). The task loss of a slice is its summed cross-entropy over the global number of
answered positions, so the averaged gradient is the gradient of the whole batch's mean loss: a
run on ``n`` processes follows the single-process run of the same global batch, up to the order
of floating-point sums. Process 0 alone writes: the MLflow run, the evaluations and ESS probe,
the checkpoints; the others train. The penalty (and a distillation teacher) act on each
process's own slice, and their gradients are averaged like the task's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Distributed", "NullTracker"]


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Distributed:
        """The process's place in a ``torchrun`` launch (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``);
        one process otherwise."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def start(self, device: torch.device) -> None:
        """Join the process group (gloo on CPU, NCCL on GPU), once."""
        if self.enabled and not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(self.local_rank)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def device(self, device: torch.device) -> torch.device:
        """Each process its own GPU (``cuda:LOCAL_RANK``); the CPU is shared."""
        return torch.device("cuda", self.local_rank) if self.enabled and device.type == "cuda" else device

    def check_batch(self, batch_size: int) -> None:
        if self.enabled and batch_size % self.world_size:
            raise ValueError(f"trainer.batch_size={batch_size} must split evenly over the {self.world_size} processes "
                             "of this torchrun launch (it is the global batch)")

    def shard(self, tensor: torch.Tensor) -> torch.Tensor:
        """This process's slice of a global batch (dim 0)."""
        if not self.enabled:
            return tensor
        per = tensor.shape[0] // self.world_size
        return tensor[self.rank * per:(self.rank + 1) * per]

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` summed over the processes (every process gets the sum)."""
        if not self.enabled:
            return value
        value = value.detach().clone()
        dist.all_reduce(value)
        return value

    def broadcast(self, obj):
        """Process 0's ``obj``, on every process."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def stop(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


class NullTracker:
    """What the processes other than 0 log to: nothing, under process 0's run id."""

    def __init__(self, run_id: str | None = None):
        self.run_id = run_id

    def __getattr__(self, name):
        if name.startswith(("log_", "set_", "delete_", "finish")):
            return lambda *args, **kwargs: None
        raise AttributeError(name)
