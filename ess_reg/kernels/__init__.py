"""The sequence kernels, each beside the naive reference it is tested against (torch only; no
import of the rest of ``ess_reg`` but its argument checks).

* :mod:`.scan`: ``scan_apply``, ``y = T v`` for a diagonal state-space operator given by
  ``(log_decay, B, C)``, in chunks (``"chunked"``, ``"factored"``); reference
  ``"sequential"`` (``sequential_scan``, beside them).  ``StateSpaceOperator.apply`` runs it.
* :mod:`.selective_scan`: ``selective_scan``, S6's scan with ``dt x A`` and the shared ``B``,
  ``C`` kept factored and a hand-written backward; reference ``selective_scan_reference``.
* :mod:`.long_conv`: ``causal_fft_conv``, a causal convolution as long as the sequence, by FFT;
  references ``toeplitz`` (its matrix) and ``causal_conv_reference`` (the sum over lags).
* :mod:`.delta_rule`: the delta rule's step ``A_t x = alpha_t (x - beta_t k_t (k_t^T x))`` and its
  sequential recurrence beside the chunked form; ``DeltaRuleOperator`` runs them.
* :mod:`.segments`: what the scans share: ``MAX_EXPONENT`` (one overflow bound), segment
  sums, and chunk sizing.
"""

from .long_conv import causal_conv_reference, causal_fft_conv, toeplitz
from .scan import SCAN_METHODS, scan_apply
from .selective_scan import selective_scan, selective_scan_reference

__all__ = [
    "scan_apply",
    "SCAN_METHODS",
    "selective_scan",
    "selective_scan_reference",
    "causal_fft_conv",
    "causal_conv_reference",
    "toeplitz",
]
