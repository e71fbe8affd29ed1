"""Synthetic recall tasks, generated on the fly (nothing is downloaded)."""

from .base import IGNORE, Batch, Task
from .copying import Compression, SelectiveCopy
from .mqar import MQAR

TASKS = {"mqar": MQAR, "selective_copy": SelectiveCopy, "compression": Compression}

__all__ = ["IGNORE", "Batch", "Task", "MQAR", "SelectiveCopy", "Compression", "TASKS"]
