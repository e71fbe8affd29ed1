"""ESS inside the trainers researchers already use. Each module imports its framework, which the
core never does: :mod:`.hf_trainer` (the ``hf`` extra: transformers and accelerate) and
:mod:`.lightning` (the ``lightning`` extra). All of them
share :class:`ess_reg.ESSMonitor` (ESS every k steps, to any logger) and the penalties of
:mod:`ess_reg.penalty`."""
