"""S6's scan with ``dt x A`` and the shared ``B``, ``C`` kept factored (:mod:`.chunked`), and its
step-by-step reference (:mod:`.naive`)."""

from .chunked import selective_scan
from .naive import selective_scan_reference

__all__ = ["selective_scan", "selective_scan_reference"]
