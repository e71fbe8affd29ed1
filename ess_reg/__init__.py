"""ess-reg: effective state-size (ESS) of sequence models, measured and used as training signal.

The core needs torch alone::

    from ess_reg import measure, diagnose, ESSPenalty, select_init

The experiment harness (``ess-train``, MLflow, Hydra) is :mod:`ess_reg.harness`, behind the
``train`` extra; the reference zoo of mixers is :mod:`ess_reg.models`.
"""

from .analysis import Analysis, analyze
from .boundaries import boundary_modulation, boundary_profile
from .contract import ESSLayer, hand_over
from .layer_report import MEASURES, FailureThresholds, LayerReport, model_summary
from .verdict import Verdict, diagnose
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
from .indices import AllIndices, ContextEnd, EvenIndices, GivenIndices, RandomIndices
from .init_search import select_init
from .jacobian import jacobian_ess, jacobian_operator
from .matrix_free import CertifiedESS, certified_ess
from .operators import (DeferredOperator, DeltaRuleOperator, DenseOperator, JacobianOperator, LinearizedOperator,
                        StateSpaceOperator, ToeplitzOperator, as_operator)
from .penalty import Budget, Constraint, DecayIdentityPenalty, ESSPenalty, Schedule, Target
from .monitor import ESSMonitor
from .probe import Adapter, NotMeasurable, Probe, measure, register_adapter
from .spectra import hankel_svdvals

__version__ = "0.1.0"

__all__ = [
    # operators and their spectra
    "DenseOperator",
    "StateSpaceOperator",
    "DeltaRuleOperator",
    "DeferredOperator",
    "JacobianOperator",
    "LinearizedOperator",
    "ToeplitzOperator",
    "as_operator",
    "hankel_svdvals",
    # ESS of an operator
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
    "jacobian_ess",
    "jacobian_operator",
    "certified_ess",
    "CertifiedESS",
    # the contract a measurable layer implements
    "ESSLayer",
    "hand_over",
    # ESS of a model's layers, and the diagnosis
    "analyze",
    "Analysis",
    "boundary_profile",
    "boundary_modulation",
    "Probe",
    "measure",
    "ESSMonitor",
    "Adapter",
    "NotMeasurable",
    "register_adapter",
    "AllIndices",
    "EvenIndices",
    "RandomIndices",
    "ContextEnd",
    "GivenIndices",
    "LayerReport",
    "MEASURES",
    "FailureThresholds",
    "Verdict",
    "diagnose",
    "model_summary",
    # ESS as training signal
    "ESSPenalty",
    "DecayIdentityPenalty",
    "Target",
    "Constraint",
    "Schedule",
    "Budget",
    "select_init",
]
