"""``benchmarks/gpu_check.py --dry-run`` on CPU: every section runs at tiny sizes or says why it is skipped, the
kernel section runs its first cases under Triton's interpreter, and the tables land in a RESULTS.md between the
markers that ``benchmarks/run.py`` keeps."""
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    spec = importlib.util.spec_from_file_location(f'benchmarks_{name}', os.path.join(ROOT, 'benchmarks', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def gpu_check():
    yield _load('gpu_check')
    torch._dynamo.reset()  # the compile section's graphs stay out of the other tests


def test_dry_run_runs_every_section_or_says_why_not(gpu_check, tmp_path, capsys):
    results = tmp_path / 'RESULTS.md'
    results.write_text('# Benchmark results\n\nrun.py tables\n')
    assert gpu_check.main(['--dry-run', '--models', 'vit_tiny_patch16_224', '--output', str(results)]) == 0
    text = results.read_text()
    assert text.startswith('# Benchmark results\n\nrun.py tables\n')  # the rest of the file is kept
    block = text[text.index(gpu_check.BEGIN):]
    assert block.rstrip().endswith(gpu_check.END) and '## GPU check: no GPU' in block
    for name in gpu_check.SECTIONS:
        assert f'### {name}: ' in block
    for name in ('sync', 'ddp'):
        assert f'### {name}: skipped' in block
    assert '### kernels: passed' in block  # the first case of each kernel, under the interpreter
    for kernel in ('patch_noise', 'paired_distance', 'attention_change'):
        assert f'| {kernel} | float32' in block
    assert '| float16 | vit_tiny_patch16_224 |' in block and 'max_memory_allocated needs CUDA' in block
    assert 'FAILED' not in block

    # A second run replaces its block; run.py's report keeps it.
    assert gpu_check.main(['--dry-run', '--models', 'vit_tiny_patch16_224', '--only', 'ddp',
                           '--output', str(results)]) == 0
    assert results.read_text().count(gpu_check.BEGIN) == 1 and '### kernels' not in results.read_text()
    speed = '<!-- corruptions_speed: begin -->\n| corruption | ... |\n<!-- corruptions_speed: end -->'
    results.write_text(results.read_text() + '\n' + speed + '\n')   # another script's block, after gpu_check's
    suite = _load('run')
    suite.write_report(dict(machine=suite.describe_machine(torch.device('cpu')), argv=[], img_size=32, repeats=1,
                            sections={}), str(results))
    text = results.read_text()
    assert text.count(gpu_check.BEGIN) == 1 and '### ddp: skipped' in text and text.count(speed) == 1


def test_a_mismatch_fails_loudly(gpu_check, monkeypatch, capsys):
    from timm_rspc.kernels import checks
    monkeypatch.setattr(checks, 'run_case', lambda case: f'{case.label}: output 0 differs by up to 1')
    assert gpu_check.main(['--dry-run', '--only', 'kernels']) == 1
    assert 'GPU CHECK FAILED: kernels' in capsys.readouterr().err


def test_a_kernel_that_fell_back_fails_loudly(gpu_check, monkeypatch, tmp_path, capsys):
    """A failed launch returns the reference's result (so its case matches) and switches the kernel off: the check
    must still fail."""
    import timm_rspc.kernels as kernels
    from timm_rspc.kernels import paired_distance
    monkeypatch.setattr(kernels, '_STATUS', {})
    monkeypatch.setattr(kernels, '_WARNED', set())

    class Broken:
        def __getitem__(self, grid):
            raise RuntimeError('ptxas fatal: simulated')
    monkeypatch.setattr(paired_distance, '_paired_sq_sum_bwd', Broken())
    results = tmp_path / 'RESULTS.md'
    with pytest.warns(RuntimeWarning, match="'paired_distance' failed"):
        assert gpu_check.main(['--dry-run', '--only', 'kernels', '--output', str(results)]) == 1
    assert '| paired_distance | state after its cases | failed (RuntimeError: ptxas fatal: simulated) |' in \
        results.read_text()


def test_dry_run_ddp_as_a_script_runs_two_gloo_processes(tmp_path):
    """The DDP section's processes import the script by path, so it runs as the GPU run will: a subprocess."""
    results = tmp_path / 'RESULTS.md'
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', 'gpu_check.py'), '--dry-run', '--only',
                           'ddp', '--models', 'vit_tiny_patch16_224', '--output', str(results)],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert '### ddp: passed' in results.read_text()
    assert '| vit_tiny_patch16_224 | 2 | gloo | True | True | True |' in results.read_text()
