"""The training paths users combine, one full optimiser step each: {RSPCTask, RSPCHook} x {fp32, fp16 AMP with timm's
GradScaler, bf16 AMP} x {eager, EMA, grad checkpointing, channels_last} on ViT, RVT and FAN.

CPU autocast produces the dtype mix of a CUDA ``--amp`` run (convolutions, linears and attention in the low precision,
their weights and the loss in float32), so float16 bugs of the CUDA path show here. Every case asserts a finite loss
and a step that moved both the backbone and C; where an exact reference exists it is asserted:
grad checkpointing and EMA give the eager step bit for bit, channels_last to the rounding of its convolutions, and the
hook gives the task's step bit for bit in fp32. (torch.compile: `test_rspc_training_modes.py`; torchrun:
`test_train.py` and `test_train_timm_script.py`.)
"""
import pytest
import torch
from timm.loss import SoftTargetCrossEntropy
from timm.utils import ModelEmaV3, NativeScaler

from timm_rspc.method import RSPCHook, RSPCTask
from test_rspc_training_modes import FAMILIES, fixed_batch, make_model

PRECISIONS = {'fp32': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}
MODES = ('eager', 'ema', 'grad_checkpointing', 'channels_last')
DRIVERS = ('task', 'hook')


def _corruption_start(name):
    """One C for every case of a family, so that cases differ only in how they train."""
    return {k: v.clone() for k, v in RSPCHook(make_model(name)).corruption_model.state_dict().items()}


_C_START = {}


def run_step(name, driver, precision, mode):
    """One optimiser step (AdamW on the backbone, C's own optimiser attached) as a training script runs it."""
    if name not in _C_START:
        _C_START[name] = _corruption_start(name)
    model = make_model(name)
    x, target, noise = fixed_batch()
    if mode == 'grad_checkpointing':
        model.set_grad_checkpointing(True)
    if mode == 'channels_last':
        model = model.to(memory_format=torch.channels_last)
        x, noise = x.contiguous(memory_format=torch.channels_last), noise.contiguous(memory_format=torch.channels_last)
    dtype = PRECISIONS[precision]
    autocast = torch.autocast('cpu', dtype=dtype or torch.bfloat16, enabled=dtype is not None)
    scaler = NativeScaler(device='cpu') if dtype is torch.float16 else None  # timm's train.py: fp16 only

    if driver == 'task':
        rspc = RSPCTask(model, SoftTargetCrossEntropy(), verbose=False)
        params = rspc.get_trainable_module().parameters()
    else:
        rspc = RSPCHook(model)
        params = model.parameters()
    rspc.corruption_model.load_state_dict(_C_START[name])
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    rspc.attach_optimizer(optimizer, loss_scaler=scaler)
    ema = None
    if mode == 'ema':
        ema = rspc.setup_ema(decay=0.5) if driver == 'task' else ModelEmaV3(model, decay=0.5)

    with autocast:
        if driver == 'task':
            out = rspc(x, target, noise=noise)
        else:
            paired, target_ = rspc(x, target, noise=noise)
            output, align_loss = rspc.split(model(paired))
            task_loss = SoftTargetCrossEntropy()(output, target_)
            out = dict(loss=rspc.loss(task_loss, align_loss), task_loss=task_loss, align_loss=align_loss)
    c_grads_seen = []
    for p in rspc.corruption_model.parameters():  # C's gradients exist only until its own step consumes them
        p.register_hook(lambda g: c_grads_seen.append(bool(torch.isfinite(g).all() and g.abs().sum() > 0)))
    if scaler is not None:
        scale_before = scaler.state_dict()['scale']
        scaler(out['loss'], optimizer)
        assert scaler.state_dict()['scale'] == scale_before, 'the fp16 step overflowed and was skipped'
    else:
        out['loss'].backward()
        optimizer.step()
    if ema is not None:
        if driver == 'task':
            rspc.update_ema()
        else:
            ema.update(model)
    assert c_grads_seen and all(c_grads_seen), 'C got no (finite) gradient'
    return dict(
        losses={k: out[k].detach() for k in ('loss', 'task_loss', 'align_loss')},
        backbone={k: v.detach().clone() for k, v in model.named_parameters()},
        buffers={k: v.clone() for k, v in model.named_buffers()},
        corruption={k: v.clone() for k, v in rspc.corruption_model.state_dict().items()},
        ema=None if ema is None else {k: v.clone() for k, v in ema.module.state_dict().items()},
    )


def _assert_close(a, b, rtol, atol, what):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=rtol, atol=atol, msg=lambda m: f'{what} {key}: {m}')


_EAGER = {}


def eager_step(name, driver, precision):
    key = (name, driver, precision)
    if key not in _EAGER:
        _EAGER[key] = run_step(name, driver, precision, 'eager')
    return _EAGER[key]


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('precision', list(PRECISIONS))
@pytest.mark.parametrize('driver', DRIVERS)
@pytest.mark.parametrize('name', list(FAMILIES))
def test_training_path(name, driver, precision, mode):
    result = eager_step(name, driver, precision) if mode == 'eager' else run_step(name, driver, precision, mode)
    for key, value in result['losses'].items():
        assert torch.isfinite(value), key
    start = dict(make_model(name).named_parameters())
    assert all(torch.isfinite(v).all() for v in result['backbone'].values())
    assert sum(not torch.equal(v, start[k]) for k, v in result['backbone'].items()) > len(start) // 2
    assert any(not torch.equal(v, _C_START[name][k]) for k, v in result['corruption'].items()), 'C did not step'

    eager = eager_step(name, driver, precision)
    if mode in ('grad_checkpointing', 'ema'):
        # (not the buffers under checkpointing: the recomputation updates BatchNorm's running statistics a second
        # time, as it does without RSPC)
        for part in ('losses', 'backbone', 'corruption') + (('buffers',) if mode == 'ema' else ()):
            _assert_close(result[part], eager[part], 0, 0, part)
    if mode == 'ema':
        # decay 0.5 after one step: the EMA is the mean of the initial and the stepped weights
        expected = {k: (v + start[k]) / 2 for k, v in result['backbone'].items()}
        _assert_close({k: result['ema'][k] for k in expected}, expected, 1e-6, 1e-6, 'ema')
    if mode == 'channels_last':
        # the convolutions round differently in that format; in 16-bit precision the losses move by its rounding
        tolerance = dict(rtol=1e-4, atol=5e-5) if precision == 'fp32' else dict(rtol=2e-2, atol=2e-3)
        _assert_close(result['losses'], eager['losses'], what='losses', **tolerance)


@pytest.mark.parametrize('name', list(FAMILIES))
def test_hook_step_is_the_task_step_in_fp32(name):
    task, hook = eager_step(name, 'task', 'fp32'), eager_step(name, 'hook', 'fp32')
    for part in ('losses', 'backbone', 'corruption'):
        _assert_close(hook[part], task[part], 0, 0, part)


@pytest.mark.parametrize('precision', ['fp16', 'bf16'])
@pytest.mark.parametrize('name', list(FAMILIES))
def test_amp_losses_are_the_fp32_losses_to_16_bit_precision(name, precision):
    amp, fp32 = eager_step(name, 'task', precision), eager_step(name, 'task', 'fp32')
    assert amp['losses']['align_loss'].dtype == torch.float32  # per-block distances accumulate in float32
    rtol = 5e-3 if precision == 'fp16' else 3e-2
    _assert_close(amp['losses'], fp32['losses'], rtol=rtol, atol=1e-3, what=precision)
