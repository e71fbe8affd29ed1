"""The experiment harness: the ``ess-train`` Hydra app, the training loop, MLflow tracking,
sweeps, checkpoints and plots.

It needs the ``train`` extra (``pip install 'ess-reg[train]'``: hydra-core, mlflow, matplotlib,
pytorch-optimizer); the core library (``import ess_reg``) needs only torch and never imports
this package.
"""

from importlib.util import find_spec

_MISSING = [name for name, module in (("hydra-core", "hydra"), ("mlflow", "mlflow"), ("matplotlib", "matplotlib"),
                                      ("pytorch-optimizer", "pytorch_optimizer")) if find_spec(module) is None]
if _MISSING:
    raise ImportError(f"ess_reg.harness needs the 'train' extra, missing {', '.join(_MISSING)}: "
                      "pip install 'ess-reg[train]'")
