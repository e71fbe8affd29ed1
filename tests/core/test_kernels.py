"""The kernels package on its own: what it imports, the long convolution against its references,
and the one overflow bound both scans size their chunks by."""

import ast
import math
import subprocess
import sys

import pytest
import torch

from ess_reg.kernels import causal_conv_reference, causal_fft_conv, toeplitz
from ess_reg.kernels.segments import MAX_EXPONENT, bounded_chunk

# ess_reg/__init__.py imports the operators, so a plain `import ess_reg.kernels` always loads
# them: the parent package is stubbed instead, and what loads is what the kernels import.
IMPORT_KERNELS_ALONE = """
import importlib.util, sys, types
stub = types.ModuleType("ess_reg")
stub.__path__ = list(importlib.util.find_spec("ess_reg").submodule_search_locations)
sys.modules["ess_reg"] = stub
import ess_reg.kernels
print(sorted(name for name in sys.modules if name.startswith("ess_reg")))
"""


def test_kernels_import_no_operators_so_no_cycle():
    out = subprocess.run([sys.executable, "-c", IMPORT_KERNELS_ALONE], capture_output=True, text=True, check=True)
    loaded = set(ast.literal_eval(out.stdout))
    assert "ess_reg.operators" not in loaded
    # ess_reg._checks: the private argument checks, the one module outside the kernels they may import.
    assert {name for name in loaded if not name.startswith("ess_reg.kernels")} == {"ess_reg", "ess_reg._checks"}


@pytest.mark.parametrize("length", [1, 7, 64])
def test_fft_conv_equals_the_direct_sum_and_the_toeplitz_matrix(length):
    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 3, length, generator=g, dtype=torch.float64)
    h = torch.randn(3, length, generator=g, dtype=torch.float64)  # one filter per channel, shared by the batch
    direct = causal_conv_reference(u, h)
    assert torch.allclose(causal_fft_conv(u, h), direct, rtol=1e-10, atol=1e-12)
    assert torch.allclose((toeplitz(h) @ u.unsqueeze(-1)).squeeze(-1), direct, rtol=1e-12, atol=1e-12)
    assert torch.equal(toeplitz(h).triu(1), torch.zeros(3, length, length, dtype=torch.float64))


def test_chunks_keep_every_exponent_within_the_one_bound():
    assert MAX_EXPONENT == 40.0
    assert bounded_chunk(5.0, 64) == 8  # the factored scan: 8 steps of 5 sum to 40
    assert bounded_chunk(5.0, 64, first_step_free=True) == 9  # the selective scan sums 8 of 9
    assert bounded_chunk(0.5, 64) == 64 and bounded_chunk(0.0, 64) == 64
    assert bounded_chunk(1000.0, 64) == 1 and bounded_chunk(math.inf, 64) == 1  # one step is exact
    assert bounded_chunk(math.nan, 16) == 16
