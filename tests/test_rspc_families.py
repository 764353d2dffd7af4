"""One model of each family trains with RSPC: the classification loss falls on a fixed tiny batch, and C, trained
alone, raises the alignment loss on that batch (it ascends what the backbone descends)."""
import pytest
import timm
import torch
from timm.loss import SoftTargetCrossEntropy

import timm_rspc  # noqa: F401  (registers RVT / FAN when present)
from timm_rspc.method import RSPCTask

# name -> (create_model kwargs, image size); small images where the model allows it
FAMILIES = {
    'vit_tiny_patch16_224': (dict(img_size=64, depth=4), 64),
    'deit_tiny_patch16_224': (dict(img_size=64, depth=4), 64),
    'rvt_tiny_plus': (dict(img_size=64), 64),
    'fan_tiny_8_p4_hybrid': (dict(img_size=64), 64),
}


def family_params():
    registered = set(timm.list_models())
    return [pytest.param(name, marks=pytest.mark.skipif(name not in registered, reason=f'{name} not registered'))
            for name in FAMILIES]


def fixed_batch(img_size, num_classes=10):
    """Four normalised images with one-hot targets, and fixed noise (so that only C's choice of patches varies)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, img_size, img_size, generator=gen).clamp(-2, 2)
    target = torch.nn.functional.one_hot(torch.arange(4) % num_classes, num_classes).float()
    return x, target, torch.rand(x.shape, generator=gen)


@pytest.mark.parametrize('name', family_params())
def test_rspc_trains_each_family(name):
    kwargs, img_size = FAMILIES[name]
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, **kwargs)
    x, target, noise = fixed_batch(img_size)

    # C's own steps made large enough to change which patches it picks within a few steps
    task = RSPCTask(model, SoftTargetCrossEntropy(), corruption_lr=100., corruption_momentum=0.,
                    corruption_weight_decay=0., corruption_clip_grad=None, verbose=False)
    assert len(task.alignment.block_names) >= 2

    # backbone training (C frozen): the classification loss on the fixed batch falls
    optimizer = torch.optim.AdamW(task.get_trainable_module().parameters(), lr=1e-3)
    task_losses = []
    for _ in range(4):
        out = task(x, target, noise=noise)
        task_losses.append(out['task_loss'].item())
        out['loss'].backward()
        optimizer.step()
        optimizer.zero_grad()
        task.corruption_model.zero_grad()
    assert task_losses[-1] < task_losses[0]

    # C training alone (backbone frozen). First push C the wrong way (descent, by flipping its gradient by hand)
    # towards harmless patches, then let it follow its own reversed gradient: the alignment loss must rise again.
    align_losses = []
    for step in range(7):
        out = task(x, target, noise=noise)
        align_losses.append(out['align_loss'].item())
        out['loss'].backward()
        if step < 3:
            for param in task.corruption_model.parameters():
                param.grad.neg_()
        task.step_corruption_model()
        task.get_trainable_module().zero_grad()
    align_losses.append(task(x, target, noise=noise)['align_loss'].item())
    assert align_losses[-1] > align_losses[3]
