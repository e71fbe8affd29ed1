import subprocess
import sys

import pytest

from ess_reg.__main__ import main
from ess_reg.demo import run


def test_demo_rows_are_consistent():
    rows = {r["operator"]: r for r in run(seq_len=32, channels=2)}
    lti, dense = rows["LTI SSM, order 8"], rows["same LTI, materialized"]
    assert lti["path"] == "state-space" and dense["path"] == "dense"
    assert abs(lti["entropy_ess"] - dense["entropy_ess"]) < 1e-6
    assert lti["tolerance_ess"] == dense["tolerance_ess"]
    shift = rows["shift by 3"]
    assert shift["tss"] == 3.0 and abs(shift["entropy_ess_mid"] - 3.0) < 1e-9
    for r in rows.values():
        assert r["tolerance_ess"] <= r["tss"] + 1e-9  # ESS never exceeds the state actually run


def test_demo_command_prints_table():
    out = subprocess.run([sys.executable, "-m", "ess_reg", "demo", "--seq-len", "24"],
                         capture_output=True, text=True, check=True).stdout
    assert "softmax attention" in out and "ent/TSS" in out and "the measure probes, reports and the penalty use" in out
    assert len([line for line in out.splitlines() if "state-space" in line]) == 3


def test_demo_rejects_bad_arguments(capsys):
    assert main(["demo", "--seq-len", "4"]) == 2
    assert "--seq-len must be >= 8" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["nonsense"])
