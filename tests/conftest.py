"""Test-session settings.

Triton's CPU interpreter must be on before Triton is first imported (its own library functions are decorated at
import time), so it is switched on here, ahead of every test module. Only `tests/test_kernels.py` calls Triton kernels;
the method dispatches to them for CUDA tensors only.
"""
import os

os.environ.setdefault('TRITON_INTERPRET', '1')
