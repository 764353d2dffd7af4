"""TEMPORARY stand-in for ``timm_rspc.method`` until the method branch is merged. Delete on merge.

Implements only the agreed contract (``add_rspc_args``, ``create_rspc_task``, ``RSPCTask.attach_optimizer``,
task state), in the simplest faithful form, so that the trainer and the demo can be exercised end to end.
"""
import argparse
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from timm.task import ClassificationTask, TrainingTask


def add_rspc_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('RSPC parameters')
    group.add_argument('--rspc', action='store_true', default=False)
    group.add_argument('--rspc-ratio', type=float, default=0.1)
    group.add_argument('--rspc-lambda', type=float, default=0.005)
    group.add_argument('--rspc-blocks', type=str, nargs='+', default=None)
    group.add_argument('--rspc-noise', type=str, default='normalized', choices=('normalized', 'pixel'))
    group.add_argument('--rspc-opt', type=str, default='sgd')
    group.add_argument('--rspc-lr', type=float, default=1e-4)
    group.add_argument('--rspc-momentum', type=float, default=0.9)
    group.add_argument('--rspc-weight-decay', type=float, default=0.05)
    group.add_argument('--rspc-clip-grad', type=float, default=5.0)


class _TopKStraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores, num_occluded):
        # Like the authors: the lowest scores are occluded, so the identity-like backward has the right sign.
        idx = scores.topk(num_occluded, dim=1, largest=False).indices
        keep = torch.ones_like(scores).scatter_(1, idx, 0.)
        return keep

    @staticmethod
    def backward(ctx, grad):
        return F.hardtanh(grad), None


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -grad


class PatchCorruptionModel(nn.Module):
    def __init__(self, in_chans, patch_size, grid_size, ratio):
        super().__init__()
        self.patch_size = patch_size
        self.grid_size = grid_size
        num_patches = grid_size[0] * grid_size[1]
        self.num_occluded = max(1, int(round(ratio * num_patches)))
        self.proj = nn.Conv2d(in_chans, 1, patch_size, patch_size, bias=False)
        self.act = nn.GELU()
        self.fc = nn.Linear(num_patches, num_patches, bias=False)

    def forward(self, x):
        scores = self.fc(self.act(self.proj(x)).flatten(1))
        keep = _TopKStraightThrough.apply(scores, self.num_occluded)
        keep = keep.view(-1, 1, *self.grid_size)
        return keep.repeat_interleave(self.patch_size, 2).repeat_interleave(self.patch_size, 3)


class RSPCTask(TrainingTask):
    def __init__(self, model, criterion, args, device=None, dtype=None, verbose=True):
        super().__init__(device=device, dtype=dtype, verbose=verbose)
        self.trainable_module = model
        self.criterion = criterion
        self.align_weight = args.rspc_lambda
        self.clip_grad = args.rspc_clip_grad
        self.args = args
        blocks = getattr(model, 'blocks', None)
        if not isinstance(blocks, nn.Sequential) or not hasattr(model, 'patch_embed'):
            raise ValueError(f'RSPC cannot find transformer blocks / patch grid in {type(model).__name__}.')
        self.blocks = list(blocks)
        pe = model.patch_embed
        self.corruption = PatchCorruptionModel(
            pe.proj.in_channels, pe.patch_size[0], pe.grid_size, args.rspc_ratio).to(self.device)
        mean = torch.tensor(model.pretrained_cfg.get('mean', (0.485, 0.456, 0.406))).view(1, -1, 1, 1)
        std = torch.tensor(model.pretrained_cfg.get('std', (0.229, 0.224, 0.225))).view(1, -1, 1, 1)
        self.register_buffer('low', (0 - mean) / std, persistent=False)
        self.register_buffer('high', (1 - mean) / std, persistent=False)
        self.corruption_optimizer = None
        self.corruption_module = self.corruption

    def attach_optimizer(self, optimizer, loss_scaler=None):
        self.corruption_optimizer = torch.optim.SGD(
            self.corruption.parameters(), lr=self.args.rspc_lr, momentum=self.args.rspc_momentum,
            nesterov=True, weight_decay=self.args.rspc_weight_decay)

        def _step_corruption(*_):
            torch.nn.utils.clip_grad_norm_(self.corruption.parameters(), self.clip_grad)
            self.corruption_optimizer.step()
            self.corruption_optimizer.zero_grad()
        optimizer.register_step_post_hook(_step_corruption)

    def prepare_distributed(self, device_ids=None, **ddp_kwargs):
        from torch.nn.parallel import DistributedDataParallel as DDP
        self.trainable_module = DDP(self.trainable_module, device_ids=device_ids, **ddp_kwargs)
        self.corruption_module = DDP(self.corruption, device_ids=device_ids, **ddp_kwargs)
        return self

    def corrupt(self, x):
        keep = _ReverseGrad.apply(self.corruption_module(x))
        noise = torch.rand_like(x)
        return (keep * x + (1 - keep) * noise).clamp(self.low, self.high), keep

    def forward(self, input, target):
        b = input.shape[0]
        corrupted, keep = self.corrupt(input)
        feats = []
        handles = [blk.register_forward_hook(lambda m, i, o: feats.append(o)) for blk in self.blocks]
        try:
            output = self.trainable_module(torch.cat([input, corrupted]))
        finally:
            for h in handles:
                h.remove()
        align = torch.stack([F.mse_loss(f[b:], f[:b]) for f in feats]).mean()
        task_loss = self.criterion(output[:b], target)
        return {
            'loss': task_loss + self.align_weight * align,
            'output': output[:b],
            'task_loss': task_loss,
            'align_loss': align,
            'occluded_fraction': 1 - keep.detach().mean(),
        }

    def get_task_state(self, module=None, ema=False):
        if ema:
            return {}
        state = {'corruption': self.corruption.state_dict()}
        if self.corruption_optimizer is not None:
            state['corruption_optimizer'] = self.corruption_optimizer.state_dict()
        return state

    def load_task_state(self, state, strict=True, module=None, ema=False):
        if ema or not state:
            return
        self.corruption.load_state_dict(state['corruption'])
        if self.corruption_optimizer is not None and 'corruption_optimizer' in state:
            self.corruption_optimizer.load_state_dict(state['corruption_optimizer'])


def create_rspc_task(args, model, criterion, device=None, dtype=None, verbose=True):
    if getattr(args, 'rspc', False):
        return RSPCTask(model, criterion, args, device=device, dtype=dtype, verbose=verbose)
    return ClassificationTask(model, criterion, device=device, dtype=dtype, verbose=verbose)
