"""Every Triton kernel compiled ahead of time for real GPUs (sm_80, sm_90), without a GPU.

Triton's interpreter (which `tests/test_kernels.py` runs the kernels under) accepts code the real compiler rejects.
Here every launch configuration the kernel modules list (`check_cases`, the same list the runtime self-check and
``benchmarks/gpu_check.py`` use) is recorded from the wrappers and compiled with ``triton.compile`` for a
``GPUTarget``; a cubin must come out. The compiler runs in a subprocess: this test session has the interpreter on
(`tests/conftest.py`), which replaces the kernels by interpreted functions.
"""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip('triton')

from timm_rspc.kernels.checks import ARCHS  # noqa: E402

JIT_FUNCTIONS = {'_fused_patch_noise_fwd', '_fused_patch_noise_bwd', '_paired_sq_sum_fwd', '_paired_sq_sum_bwd',
                 '_attention_row_stats'}


def _compile(tmp_path, *flags):
    out = tmp_path / 'matrix.json'
    # A fresh cache, so that every configuration is really compiled.
    env = dict(os.environ, TRITON_INTERPRET='0', TRITON_CACHE_DIR=str(tmp_path / 'cache'), OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-m', 'timm_rspc.kernels.checks', '--json', str(out), *flags],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert rows and all(row['compiled'] and row['cubin_bytes'] > 0 for row in rows)
    return rows


def test_every_kernel_compiles_for_each_architecture(tmp_path):
    rows = _compile(tmp_path, '--first-only')
    assert {(row['function'], row['arch']) for row in rows} == {
        (name, f'sm_{arch}') for name in JIT_FUNCTIONS for arch in ARCHS}


@pytest.mark.slow
def test_every_launch_configuration_compiles_for_each_architecture(tmp_path):
    """One to two minutes on a 2-core CPU: 120 distinct specialisations per architecture (fp32, fp16, bf16, fp64)."""
    from timm_rspc.kernels import KERNELS
    from timm_rspc.kernels.checks import COMPILE_DTYPES, cases
    rows = _compile(tmp_path)
    for arch in ARCHS:
        compiled_cases = {row['case'] for row in rows if row['arch'] == f'sm_{arch}'}
        for kernel in KERNELS:
            # Every configuration was launched (some share a compiled specialisation with an earlier one, e.g. with
            # and without the input gradient in the forward): every case's backward, or its only kernel, is listed.
            labels = {case.label for case in cases(kernel, 'cpu', COMPILE_DTYPES)}
            assert labels <= compiled_cases, sorted(labels - compiled_cases)
        functions = {row['function'] for row in rows if row['arch'] == f'sm_{arch}'}
        assert functions == JIT_FUNCTIONS
