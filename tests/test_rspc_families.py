"""One model of each family trains with RSPC: the classification loss falls on a fixed tiny batch, and C, updated
alone, raises the alignment loss on that batch (it ascends what the backbone descends).

C's gradient reaches it through a straight-through estimator over a discrete choice of patches (64 px, 16 patches,
2 corrupted), and at random initialisation, scaled by lambda = 0.005, it is small: C's learning rate here (3000, i.e.
lambda * lr = 15) is what makes one step change which patches C picks. One step along C's own (reversed) gradient
raises L_align on every family, and by more than one step in the opposite direction does.
"""
import pytest
import timm
import torch
from timm.loss import SoftTargetCrossEntropy

import timm_rspc  # noqa: F401  (registers RVT / FAN)
from timm_rspc.method import RSPCTask

# name -> (create_model kwargs, image size); small images where the model allows it
FAMILIES = {
    'vit_tiny_patch16_224': (dict(img_size=64, depth=4), 64),
    'deit_tiny_patch16_224': (dict(img_size=64, depth=4), 64),
    'rvt_tiny_plus': (dict(img_size=64), 64),
    'fan_tiny_8_p4_hybrid': (dict(img_size=64, depth=2), 64),
}


def fixed_batch(img_size, num_classes=10):
    """Four normalised images with one-hot targets, and fixed noise (so that only C's choice of patches varies)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, img_size, img_size, generator=gen).clamp(-2, 2)
    target = torch.nn.functional.one_hot(torch.arange(4) % num_classes, num_classes).float()
    return x, target, torch.rand(x.shape, generator=gen)


@pytest.mark.parametrize('name', list(FAMILIES))
def test_rspc_trains_each_family(name):
    kwargs, img_size = FAMILIES[name]
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, **kwargs)
    x, target, noise = fixed_batch(img_size)

    # C's step made large enough to change which patches it picks in one step (see the module docstring)
    task = RSPCTask(model, SoftTargetCrossEntropy(), corruption_lr=3000., corruption_momentum=0.,
                    corruption_weight_decay=0., corruption_clip_grad=None, verbose=False)
    assert len(task.alignment.block_names) >= 2

    # C alone (backbone fixed), one step each way from the same C: following its own (reversed) gradient C raises
    # the alignment loss on the batch, and by more than the opposite step does.
    def align_after_one_c_step(direction):
        task.corruption_model.load_state_dict(start)
        out = task(x, target, noise=noise)
        out['loss'].backward()
        for param in task.corruption_model.parameters():
            param.grad.mul_(direction)
        task.step_corruption_model()
        task.get_trainable_module().zero_grad()
        return out['align_loss'].item(), task(x, target, noise=noise)['align_loss'].item()

    start = {k: v.clone() for k, v in task.corruption_model.state_dict().items()}
    align_start, align_up = align_after_one_c_step(+1)
    _, align_down = align_after_one_c_step(-1)
    assert align_up > align_start and align_up > align_down

    # backbone training (C fixed): the classification loss on the fixed batch falls
    task.corruption_model.load_state_dict(start)
    optimizer = torch.optim.AdamW(task.get_trainable_module().parameters(), lr=1e-3)
    task_losses = []
    for _ in range(3):
        out = task(x, target, noise=noise)
        task_losses.append(out['task_loss'].item())
        out['loss'].backward()
        optimizer.step()
        optimizer.zero_grad()
        task.corruption_model.zero_grad()
    assert task_losses[-1] < task_losses[0]
