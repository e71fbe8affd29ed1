"""One process trains a run at a time: a lock file beside the run's checkpoint.

A run that is still training in another process must not be resumed (both would log the same
steps and write the same checkpoint), while a run whose process was killed must be: its status
stays RUNNING either way, so the status cannot tell them apart. The process that trains a run
holds an exclusive ``flock`` on ``<checkpoint_dir>/<run id>/train.lock``; the operating system
drops it when the process ends, however it ends (``kill -9`` included). A resume that cannot take
the lock is refused, naming the holder's pid and host. POSIX only (on Windows nothing is locked),
and local to the file system the checkpoint folder is on.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from .build import ConfigError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not guarded
    fcntl = None

__all__ = ["RunLock", "LOCK_NAME"]

LOCK_NAME = "train.lock"


class RunLock:
    """``with RunLock(folder, run_id):`` holds the run's lock for the block; entering raises
    :class:`ConfigError` if another live process holds it."""

    def __init__(self, folder: str | os.PathLike, run_id: str):
        self.path, self.run_id, self._file = Path(folder) / LOCK_NAME, run_id, None

    def __enter__(self) -> RunLock:
        if fcntl is None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ConfigError(f"run {self.run_id} is being trained by {holder} right now ({self.path} is locked): "
                              "wait for it to end, or stop it, before resuming") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._file = handle
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
