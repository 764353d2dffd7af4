"""The kernels' runtime safety net, on CPU under Triton's interpreter: a kernel made to fail on purpose is switched
off with one warning, and the PyTorch path gives the results; the self-check cases themselves match the references.

`use_kernels` dispatches for CUDA tensors only; the tests call its per-kernel check (`kernel_status`) on the CPU
device, or pass it a stand-in tensor that claims to be on CUDA, so that the same code paths run.
"""
import types
import warnings

import pytest
import torch

triton = pytest.importorskip('triton')
if not triton.knobs.runtime.interpret:
    pytest.skip('Triton was imported before TRITON_INTERPRET=1 was set (see tests/conftest.py); no GPU to run on',
                allow_module_level=True)

import timm_rspc.kernels as kernels  # noqa: E402
from timm_rspc.kernels import KERNELS, kernel_status, use_kernels  # noqa: E402
from timm_rspc.kernels import paired_distance, patch_noise  # noqa: E402
from timm_rspc.kernels.checks import cases, run_case  # noqa: E402
# The dispatching modules register the kernels' PyTorch references at import (`kernels.register_reference`).
import timm_rspc.analysis.attention  # noqa: E402,F401
import timm_rspc.method.corruption  # noqa: E402,F401
from timm_rspc.method.alignment import paired_mse  # noqa: E402

CPU = torch.device('cpu')


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch):
    """Each test starts as a fresh process would: nothing checked, nothing warned."""
    monkeypatch.setattr(kernels, '_STATUS', {})
    monkeypatch.setattr(kernels, '_WARNED', set())


class _Broken:
    """Stands in for a jit function whose compilation fails (``kernel[grid](...)`` raises)."""

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            raise RuntimeError('PTX assembly failed: sm_90 (simulated)')
        return launch


def _kernel_warnings(record):
    return [str(w.message) for w in record if 'Triton kernel' in str(w.message)]


@pytest.mark.parametrize('kernel', KERNELS)
def test_check_cases_match_the_references(kernel):
    """Every launch configuration gpu_check.py runs on CUDA, here in float32 and float16 (the interpreter gets bf16
    wrong); the self-check is the first of them."""
    found = list(cases(kernel, CPU, (torch.float32, torch.float16)))
    assert found and found[0].dtype == torch.float32
    assert [run_case(case) for case in found] == [None] * len(found)


def test_self_check_passes_and_runs_once(monkeypatch):
    from timm_rspc.kernels import checks
    calls = []
    real = checks.self_check
    monkeypatch.setattr(checks, 'self_check', lambda *args: calls.append(args) or real(*args))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert kernel_status('paired_distance', CPU) is None
        assert kernel_status('paired_distance', CPU) is None
    assert len(calls) == 1


def test_self_check_inside_a_training_step_context():
    """First use may come inside a step: under autocast, no_grad, inference_mode or activation checkpointing's
    saved-tensor hooks. The check is not disturbed by them (a failure would be a false alarm: a warning and a slower
    run)."""
    def refuse(tensor):
        raise RuntimeError('saved by the self-check into the caller\'s checkpoint')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        with torch.autocast('cpu', dtype=torch.bfloat16), torch.inference_mode(), \
                torch.autograd.graph.saved_tensors_hooks(refuse, refuse):
            assert all(kernel_status(name, CPU) is None for name in KERNELS)


def test_compile_error_switches_the_kernel_off_with_one_warning(monkeypatch):
    monkeypatch.setattr(paired_distance, '_paired_sq_sum_fwd', _Broken())
    with pytest.warns(RuntimeWarning) as record:
        reason = kernel_status('paired_distance', CPU)
    assert 'PTX assembly failed' in reason
    (message,) = _kernel_warnings(record)
    assert "'paired_distance'" in message and 'TIMM_RSPC_KERNELS=0' in message and '\n' not in message
    # From then on: off, silently; a direct call still gives the reference's result (the PyTorch path).
    features = torch.randn(4, 6, 5, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert kernel_status('paired_distance', CPU) is not None
        torch.testing.assert_close(paired_distance.fused_paired_mse(features), paired_mse(features))


def test_wrong_results_switch_the_kernel_off(monkeypatch):
    monkeypatch.setattr(paired_distance, 'fused_paired_mse', lambda features: 2 * paired_mse(features))
    with pytest.warns(RuntimeWarning, match="'paired_distance' did not match its PyTorch reference"):
        assert kernel_status('paired_distance', CPU) is not None


def test_dispatch_declines_a_failed_kernel_only(monkeypatch):
    """`use_kernels` as the method calls it: for a CUDA tensor (a stand-in here), all kernels or one by name."""
    monkeypatch.setattr(paired_distance, '_paired_sq_sum_fwd', _Broken())
    on_cuda = types.SimpleNamespace(is_cuda=True, device=CPU)
    with pytest.warns(RuntimeWarning):
        assert not use_kernels(on_cuda)
    assert not use_kernels(on_cuda, 'paired_distance')
    assert use_kernels(on_cuda, 'patch_noise') and use_kernels(on_cuda, 'attention_change')
    monkeypatch.setenv('TIMM_RSPC_KERNELS', '0')
    assert not use_kernels(on_cuda, 'patch_noise')


def test_failing_backward_falls_back_to_the_reference_gradient(monkeypatch):
    monkeypatch.setattr(paired_distance, '_paired_sq_sum_bwd', _Broken())
    features = torch.randn(4, 6, 5, generator=torch.Generator().manual_seed(0))
    got, expected = features.clone().requires_grad_(True), features.clone().requires_grad_(True)
    with pytest.warns(RuntimeWarning, match="'paired_distance' failed"):
        (paired_distance.fused_paired_mse(got) * 3.).backward()
    (paired_mse(expected) * 3.).backward()
    torch.testing.assert_close(got.grad, expected.grad)


@pytest.mark.parametrize('noise_mode', ['normalized', 'pixel'])
def test_patch_noise_failing_backward_recomputes_the_in_kernel_noise(monkeypatch, noise_mode):
    """The fallback gradient uses the noise of the forward, drawn again from the seed."""
    from timm_rspc.method.corruption import normalized_pixel_range
    lower, upper = normalized_pixel_range((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=gen) * 2.
    keep = (torch.rand(2, 4, generator=gen) > 0.4).float()
    seed = torch.tensor([5], dtype=torch.int64)
    grad_out = torch.randn(x.shape, generator=gen)

    def run():
        x_leaf, keep_leaf = x.clone().requires_grad_(True), keep.clone().requires_grad_(True)
        out = patch_noise.fused_patch_noise(x_leaf, keep_leaf, 4, lower, upper, seed=seed, noise_mode=noise_mode)
        out.backward(grad_out)
        return out, x_leaf.grad, keep_leaf.grad
    expected = run()
    monkeypatch.setattr(patch_noise, '_fused_patch_noise_bwd', _Broken())
    with pytest.warns(RuntimeWarning, match="'patch_noise' failed"):
        got = run()
    for value, ref in zip(got, expected):
        torch.testing.assert_close(value, ref, rtol=1e-5, atol=1e-5)


def test_failing_forward_falls_back_to_the_pytorch_corruption(monkeypatch):
    from timm_rspc.method.corruption import normalized_pixel_range
    monkeypatch.setattr(patch_noise, '_fused_patch_noise_fwd', _Broken())
    lower, upper = normalized_pixel_range((0.5,) * 3, (0.5,) * 3)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    keep = torch.tensor([[1., 0., 1., 1.], [0., 0., 1., 1.]])
    with pytest.warns(RuntimeWarning, match="'patch_noise' failed"):
        out = patch_noise.fused_patch_noise(x, keep, 4, lower, upper, seed=torch.tensor([1]))
    assert torch.equal(out[0, :, :4, :4], x[0, :, :4, :4])  # a kept patch
    assert not torch.equal(out[0, :, :4, 4:], x[0, :, :4, 4:])  # a corrupted one, noise in range
    assert out.min() >= -1 and out.max() <= 1


def test_info_on_cpu_says_why_the_kernels_are_inactive(capsys, monkeypatch):
    from timm_rspc.cli import main
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert main(['info']) == 0
    out = capsys.readouterr().out
    for name in ('python', 'torch', 'timm', 'triton', 'timm_rspc'):
        assert f'\n{name} ' in f'\n{out}'
    assert 'kernels    inactive: no CUDA device' in out


def test_info_runs_each_kernels_self_check_per_gpu(capsys, monkeypatch):
    """With a (simulated) GPU: one line per kernel, a failed self-check with its reason and exit status 1."""
    from timm_rspc.cli import main
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda index: (9, 0))
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda index: 'NVIDIA H100 80GB HBM3')
    states = {'paired_distance': 'failed its self-check (RuntimeError: PTX assembly failed)'}
    monkeypatch.setattr(kernels, 'kernel_status', lambda name, device: states.get(name))
    assert main(['info']) == 1
    out = capsys.readouterr().out
    assert 'device     cuda:0: NVIDIA H100 80GB HBM3 (sm_90)' in out
    assert 'kernel     patch_noise on cuda:0: active (self-check passed)' in out
    assert 'kernel     paired_distance on cuda:0: failed its self-check (RuntimeError: PTX assembly failed)' in out
