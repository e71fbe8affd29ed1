"""Fixtures shared by the test files: an MLflow store of the test's own, the overrides of a tiny
run that writes only into it, and the environment for child processes.

Builders that take the arguments a test varies (random operators, small models, token batches)
are plain functions in ``tests/factories.py``, imported where used.
"""

import os

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need CUDA: skipped, in one place, where there is none (CI); on a GPU
    machine ``pytest -m gpu`` runs exactly them (bench/gpu_check.sh)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (marked gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def store(tmp_path):
    """A fresh MLflow store (SQLite) with its artifact and checkpoint folders, all under ``tmp_path``."""
    return {"uri": f"sqlite:///{tmp_path}/mlflow.db", "artifacts": str(tmp_path / "artifacts"), "dir": tmp_path}


@pytest.fixture
def tiny(store):
    """``tiny(*extra)``: the overrides of a tiny run (``experiment=tiny``) that writes only into
    ``store``, followed by ``extra`` (the setting under test comes last and wins)."""

    def overrides(*extra):
        return ["experiment=tiny", f"tracking.uri={store['uri']}", f"tracking.artifact_location={store['artifacts']}",
                f"trainer.checkpoint_dir={store['dir']}/ckpt", "trainer.progress=false", *extra]

    return overrides


@pytest.fixture
def child_env():
    """The environment for a child process: this one's, without ``MLFLOW_TRACKING_URI``, so that
    the child writes only to the store its arguments name."""
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
