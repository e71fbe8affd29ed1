"""The process around a run: console logging outside Hydra, the ``[job N]`` prefix in sweeps,
and stopping cleanly on a signal."""

from __future__ import annotations

import logging
import signal
import sys
import threading

from .training import TrainingInterrupted

__all__ = ["console_logging", "JobTag", "StopOnSignal"]

log = logging.getLogger("ess_reg")


def console_logging() -> None:
    """Outside Hydra (notebooks, tests), progress still reaches the terminal."""
    if not logging.getLogger().handlers and not log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


class JobTag(logging.Filter):
    def __init__(self, job: int):
        super().__init__()
        self.prefix = f"[job {job}] "

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            record.msg = self.prefix + str(record.msg)
        return True


class StopOnSignal:
    """SIGINT, SIGTERM and SIGHUP while a run trains (main thread only) ask it to stop: the
    training loop stops before its next step (:class:`TrainingInterrupted`), so no write to the
    store or a checkpoint is cut in half (a signal raised inside an SQLite commit left the store
    locked, and the run could not even be marked KILLED). A second signal stops at once."""

    def __enter__(self):
        self.saved, self.received = {}, None
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
                if sig is not None:
                    self.saved[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.received is not None:
            raise TrainingInterrupted(f"received {self.received}, then {name}")
        self.received = name

    def reason(self) -> str | None:
        return f"received {self.received}" if self.received else None

    def __exit__(self, *exc):
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
