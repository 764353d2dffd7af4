"""The evaluation engine: a model over one benchmark split, sharded over processes, counted on the device.

Each process takes every ``world_size``-th sample (no sampler padding, so no image is counted twice and none is
left out), keeps its counts on the device for the whole split (no host sync per batch) and the counts are summed
over processes once at the end. Loading reuses timm's pieces: uint8 images are collated with ``fast_collate`` and
moved, converted and normalised on the device by ``PrefetchLoader``, as in timm's validate.py.
"""
import contextlib
import os
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
from timm.data.loader import PrefetchLoader, fast_collate
from torch.utils.data import DataLoader, Dataset, Subset

from .datasets import UnreadableFile, collate_videos
from .perturbation_metrics import top5_classes, video_stability

__all__ = ['Evaluator', 'AMP_DTYPES', 'WORKERS', 'amp_dtype_name']

# Data loading processes: timm validate.py's 4, or fewer where fewer CPUs are available (torch warns beyond them).
WORKERS = min(4, len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1)

# timm's --amp-dtype names, and the short names of earlier versions (same meaning).
AMP_DTYPES = {'float16': torch.float16, 'bfloat16': torch.bfloat16, 'fp16': torch.float16, 'bf16': torch.bfloat16}


def amp_dtype_name(amp: Optional[str]) -> Optional[str]:
    """timm's name of an autocast dtype ('bf16' -> 'bfloat16'); None for float32."""
    return None if amp is None else str(AMP_DTYPES[amp]).replace('torch.', '')


@contextlib.contextmanager
def _worker_errors_named():
    """A data set error raised in a loader worker, re-raised with its own one-line message (not the traceback)."""
    try:
        yield
    except (UnreadableFile, ValueError) as e:
        text = str(e)
        if 'Original Traceback' not in text:
            raise
        raise type(e)(text.strip().splitlines()[-1].partition(': ')[2]) from None


class Evaluator:
    """Runs one model over benchmark splits and returns exact, process-summed counts."""

    def __init__(
            self,
            model: nn.Module,
            mean: Sequence[float],
            std: Sequence[float],
            device: torch.device = torch.device('cpu'),
            batch_size: int = 128,
            workers: int = WORKERS,
            amp: Optional[str] = None,
            channels_last: Optional[bool] = None,
            progress: bool = True,
            references: Sequence[Tuple[nn.Module, Sequence[float], Sequence[float]]] = (),
    ):
        """``references``: (model, mean, std) of reference models that `top1_correct_corrupted` evaluates on the
        same corrupted images as ``model``."""
        self.device = torch.device(device)
        self.channels_last = self.device.type == 'cuda' if channels_last is None else channels_last
        self.model = self._prepared(model)
        self.mean, self.std = tuple(mean), tuple(std)
        self.references = [(self._prepared(m), tuple(m_mean), tuple(m_std)) for m, m_mean, m_std in references]
        self.batch_size, self.workers, self.progress = batch_size, workers, progress
        self.amp_dtype = AMP_DTYPES[amp] if amp else None
        self.rank, self.world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)

    def _prepared(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device).eval()
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def _loader(self, dataset: Dataset, batch_size: int, collate, normalise: bool = True) -> PrefetchLoader:
        """The process's shard through timm's loader; ``normalise`` off gives pixels in [0, 1]."""
        shard = Subset(dataset, range(self.rank, len(dataset), self.world_size))
        loader = DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=self.workers,
                            collate_fn=collate, pin_memory=self.device.type == 'cuda')
        mean, std = (self.mean, self.std) if normalise else ((0.,) * len(self.mean), (1.,) * len(self.std))
        return PrefetchLoader(loader, mean=mean, std=std, device=self.device)

    def _batches(self, dataset: Dataset, what: str, batch_size: int, collate, unit: str,
                 normalise: bool = True) -> Iterator:
        from tqdm import tqdm
        bar = tqdm(total=len(dataset), desc=what, unit=unit, leave=False, dynamic_ncols=True,
                   disable=not self.progress or self.rank != 0)
        with bar, _worker_errors_named():
            for inputs, targets in self._loader(dataset, batch_size, collate, normalise):
                yield inputs, targets
                bar.update(min(len(targets) * self.world_size, bar.total - bar.n))

    def _logits(self, x: torch.Tensor, model: Optional[nn.Module] = None) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            return (self.model if model is None else model)(x).float()

    def _sum_over_processes(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(tensor)
        return tensor

    @torch.inference_mode()
    def top1_correct(self, dataset: Dataset, what: str, logit_indices: Optional[torch.Tensor] = None,
                     ) -> Tuple[int, int]:
        """(correct, total) top-1 over ``dataset``; ``logit_indices`` restricts the logits (ImageNet-A / -R)."""
        counts = torch.zeros(2, dtype=torch.int64, device=self.device)
        keep = None if logit_indices is None else logit_indices.to(self.device)
        for inputs, targets in self._batches(dataset, what, self.batch_size, fast_collate, 'img'):
            logits = self._logits(inputs)
            if keep is not None:
                logits = logits[:, keep]
            counts[0] += (logits.argmax(dim=1) == targets).sum()
            counts[1] += len(targets)
        correct, total = self._sum_over_processes(counts).tolist()
        if total != len(dataset):
            raise RuntimeError(f'{what}: counted {total} images of {len(dataset)}.')
        return correct, total

    @torch.inference_mode()
    def top1_correct_corrupted(self, dataset: Dataset, what: str, corruption: Callable,
                               ) -> Tuple[int, List[int], int]:
        """(correct, [correct of each reference model], total) on ``dataset`` corrupted on the device.

        ``corruption(pixels in [0, 1], data set indices) -> uint8 pixels`` runs on each whole batch (the indices
        are the images' positions in ``dataset``, the same at any batch size and rank); each model then sees the
        corrupted pixels normalised with its own mean / std, as timm's prefetcher normalises clean ones.
        """
        models = [(self.model, self.mean, self.std)] + list(self.references)
        scales = [(torch.tensor([255 * v for v in mean], device=self.device).view(1, -1, 1, 1),
                   torch.tensor([255 * v for v in std], device=self.device).view(1, -1, 1, 1))
                  for _, mean, std in models]
        counts = torch.zeros(len(models) + 1, dtype=torch.int64, device=self.device)
        done = 0  # images of this process's shard already seen (host-side: no sync)
        for pixels, targets in self._batches(dataset, what, self.batch_size, fast_collate, 'img', normalise=False):
            count = len(targets)
            indices = range(self.rank + self.world_size * done, self.rank + self.world_size * (done + count),
                            self.world_size)
            corrupted = corruption(pixels, indices).float()
            for k, ((model, _, _), (mean, std)) in enumerate(zip(models, scales)):
                counts[k] += (self._logits((corrupted - mean) / std, model).argmax(dim=1) == targets).sum()
            counts[-1] += count
            done += count
        *correct, total = self._sum_over_processes(counts).tolist()
        if total != len(dataset):
            raise RuntimeError(f'{what}: counted {total} images of {len(dataset)}.')
        return correct[0], correct[1:], total

    @torch.inference_mode()
    def video_stability(self, dataset: Dataset, what: str, noise: bool, videos_per_batch: int = 1,
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-video flips, top-5 distance sums and comparison counts (`perturbation_metrics.video_stability`)."""
        sums = torch.zeros(3, len(dataset), dtype=torch.float64, device=self.device)
        mine = torch.arange(self.rank, len(dataset), self.world_size, device=self.device)
        done = 0
        for frames, lengths in self._batches(dataset, what, videos_per_batch, collate_videos, 'video'):
            top5 = torch.cat([top5_classes(self._logits(chunk)) for chunk in frames.split(self.batch_size)])
            flips, distance, pairs = video_stability(top5, lengths, noise)
            index = mine[done:done + len(lengths)]
            sums[:, index] = torch.stack([flips, distance, pairs])
            done += len(lengths)
        flips, distance, pairs = self._sum_over_processes(sums)
        return flips, distance, pairs
