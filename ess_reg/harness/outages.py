"""When the tracking store goes away: which errors are worth waiting out, and for how long.

A tracking server that restarts, a dropped connection half-way through a response
(``IncompleteRead``, which MLflow itself does not retry) or an SQLite file another writer holds
locked are passing troubles; a wrong parameter or a missing run are not. :func:`transient` tells
them apart; :func:`retrying` waits the passing ones out with a doubling backoff for up to
``tracking.retry_seconds``, then raises :class:`StoreUnavailable`, which says how long it waited
and why. :class:`ess_reg.harness.tracking.Tracker` decides what waits (a run's start and end) and
what is kept aside while training goes on (metrics, figures).
"""

from __future__ import annotations

import http.client
import logging
import re
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["RETRY_SECONDS", "StoreUnavailable", "transient", "retrying", "Backoff"]

log = logging.getLogger("ess_reg")
T = TypeVar("T")

RETRY_SECONDS = 300.0  # tracking.retry_seconds: a server restart, not a lost server

# MLflow's own wording for a request that never got a full answer, and for a busy gateway
_NO_ANSWER = re.compile(r"API request to .* failed with (timeout )?exception|failed with error code 50[234]\b"
                        r"|database is locked|Max retries exceeded|Connection (refused|reset|aborted)")


class StoreUnavailable(RuntimeError):
    """The tracking store did not answer for longer than the allowed time."""

    def __init__(self, uri: str, seconds: float, error: BaseException):
        self.uri, self.seconds, self.error = uri, seconds, error
        first = str(error).splitlines()[0] if str(error) else ""
        super().__init__(f"the tracking store at {uri} has not answered for {seconds:.0f} s "
                         f"({type(error).__name__}: {first[:200]})")


def transient(err: BaseException) -> bool:
    """True for an error that a store which comes back would not repeat: no connection, a
    connection cut mid-answer, a timeout, a 502/503/504, a locked SQLite file; looked for in the
    error and in what caused it."""
    try:
        import requests
        dropped = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
    except ImportError:  # pragma: no cover - mlflow depends on it
        dropped = ()
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, (ConnectionError, TimeoutError, http.client.HTTPException, *dropped)):
            return True
        if _NO_ANSWER.search(str(err)):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


class Backoff:
    """Waits that double from ``first`` up to ``cap`` seconds."""

    def __init__(self, first: float = 0.5, cap: float = 30.0):
        self.first, self.cap, self.next = first, cap, first

    def wait(self) -> float:
        delay, self.next = self.next, min(self.next * 2, self.cap)
        return delay

    def reset(self) -> None:
        self.next = self.first


def retrying(call: Callable[[], T], *, uri: str, window: float, what: str,
             sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> T:
    """``call()``, tried again after each transient error until ``window`` seconds have passed;
    any other error is raised at once."""
    start, backoff, warned = clock(), Backoff(), False
    while True:
        try:
            return call()
        except Exception as err:
            if not transient(err):
                raise
            waited = clock() - start
            if waited >= window:
                raise StoreUnavailable(uri, waited, err) from err
            if not warned:
                log.warning("ess-train: the tracking store at %s did not answer (%s: %s) while %s; trying again "
                            "for up to %.0f s", uri, type(err).__name__,
                            str(err).splitlines()[0][:160] if str(err) else "",
                            what, window)
                warned = True
            sleep(min(backoff.wait(), max(window - waited, 0.0)))
