"""Two CPU processes (gloo): C starts from rank 0's weights, its gradients are averaged, it stays identical.

The run on two halves of a batch must also equal one process on the whole batch: DDP averages the backbone's
gradients, the corruption optimiser averages C's. In fp32 and under float16 autocast with timm's GradScaler (the dtype
mix and the scaled, then unscaled, C gradients of a CUDA `--amp` run).
"""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD_SIZE = 2
STEPS = 2


def build_task(seed, precision='fp32'):
    import timm
    from timm.loss import SoftTargetCrossEntropy
    from timm.utils import NativeScaler
    from timm_rspc.method import RSPCTask
    torch.manual_seed(0)
    model = timm.create_model('vit_tiny_patch16_224', img_size=32, depth=2, num_classes=10)
    torch.manual_seed(seed)  # C's initialisation differs per rank until prepare_distributed
    task = RSPCTask(model, SoftTargetCrossEntropy(), verbose=False)
    optimizer = torch.optim.SGD(task.get_trainable_module().parameters(), lr=0.5)
    scaler = NativeScaler(device='cpu') if precision == 'fp16' else None
    task.attach_optimizer(optimizer, loss_scaler=scaler)
    return task, optimizer, scaler


def data():
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(STEPS, 4, 3, 32, 32, generator=gen) * 2 - 1
    target = torch.softmax(torch.randn(STEPS, 4, 10, generator=gen), dim=-1)
    return x, target, torch.rand(x.shape, generator=gen)


def train(task, optimizer, scaler, x, target, noise):
    for step in range(STEPS):
        with torch.autocast('cpu', dtype=torch.float16, enabled=scaler is not None):
            loss = task(x[step], target[step], noise=noise[step])['loss']
        if scaler is not None:
            scaler(loss, optimizer)
        else:
            loss.backward()
            optimizer.step()
        optimizer.zero_grad()


def result(task):
    return {
        'corruption_model': {k: v.clone() for k, v in task.corruption_model.state_dict().items()},
        'backbone': {k: v.clone() for k, v in task.get_eval_model().state_dict().items()},
    }


def worker(rank, init_file, out_dir, precision):
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=WORLD_SIZE)
    try:
        task, optimizer, scaler = build_task(seed=100 + rank, precision=precision)
        task.prepare_distributed()
        initial_c = result(task)['corruption_model']
        x, target, noise = data()
        half = slice(rank * 2, rank * 2 + 2)
        train(task, optimizer, scaler, x[:, half], target[:, half], noise[:, half])
        torch.save(dict(result(task), initial_c=initial_c), os.path.join(out_dir, f'rank{rank}.pt'))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason='torch.distributed is not available')
@pytest.mark.parametrize('precision', ['fp32', 'fp16'])
def test_two_process_gloo_keeps_c_identical(tmp_path, precision):
    mp.spawn(worker, args=(str(tmp_path / 'init'), str(tmp_path), precision), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(tmp_path / f'rank{r}.pt', weights_only=True) for r in range(WORLD_SIZE)]

    reference_task, optimizer, scaler = build_task(seed=100, precision=precision)  # rank 0's initial C
    for key, value in reference_task.corruption_model.state_dict().items():
        assert torch.equal(ranks[1]['initial_c'][key], value)  # rank 1 started from rank 0's C
    train(reference_task, optimizer, scaler, *data())
    reference = result(reference_task)
    # fp16: the two halves' float16 forward rounds differently from the whole batch's
    c_tol, backbone_tol = (dict(rtol=1e-5, atol=1e-8), dict(rtol=1e-4, atol=1e-6)) if precision == 'fp32' else \
        (dict(rtol=1e-3, atol=1e-6), dict(rtol=1e-2, atol=1e-3))
    for key, value in ranks[0]['corruption_model'].items():
        assert torch.equal(value, ranks[1]['corruption_model'][key])  # bit-identical across ranks
        torch.testing.assert_close(value, reference['corruption_model'][key], **c_tol)
        assert not torch.equal(value, ranks[0]['initial_c'][key])  # and it did train
    for key, value in ranks[0]['backbone'].items():
        assert torch.equal(value, ranks[1]['backbone'][key])
        torch.testing.assert_close(value, reference['backbone'][key], **backbone_tol)
