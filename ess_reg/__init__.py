"""ess-reg: effective state-size (ESS) of sequence models, measured and used as training signal."""

from .ess import (
    LayerESS,
    average_ess,
    entropy_ess,
    entropy_ess_from_svdvals,
    layer_ess,
    soft_tolerance_ess,
    soft_tolerance_ess_from_svdvals,
    tolerance_ess,
    tolerance_ess_from_svdvals,
    total_ess,
)
from .operators import DenseOperator, StateSpaceOperator, as_operator
from .spectra import hankel_svdvals

__version__ = "0.1.0"

__all__ = [
    "DenseOperator",
    "StateSpaceOperator",
    "as_operator",
    "hankel_svdvals",
    "entropy_ess",
    "entropy_ess_from_svdvals",
    "tolerance_ess",
    "tolerance_ess_from_svdvals",
    "soft_tolerance_ess",
    "soft_tolerance_ess_from_svdvals",
    "average_ess",
    "total_ess",
    "LayerESS",
    "layer_ess",
]
