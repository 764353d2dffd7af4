"""Finding the blocks and the patch grid of any timm model, and hooking the blocks to measure feature alignment.

RSPC aligns the features of corrupted and clean images at every transformer block. The authors hard-wired this into
their RVT and FAN block classes; here forward hooks do it for any model from outside, without touching model code:

* `find_blocks` lists a model's transformer blocks: modules named ``blocks.<i>`` (ViT, DeiT, FAN) or
  ``<...>.blocks.<i>`` (RVT's ``transformers.<stage>.blocks.<i>``, Swin's ``layers.<stage>.blocks.<i>``), outside the
  patch embedding (FAN's hybrid ConvNeXt stem) and not nested in another block. FAN's ``cls_attn_blocks`` are not
  matched: they see the class token, not the patch tokens.
* `select_blocks` narrows that list by index / slice, or picks modules by name pattern.
* `PairedBlockDistance` hooks the chosen blocks for one paired forward pass on ``cat([corrupted, clean])`` only, and
  reduces each block's output to one distance after it; no block's features are kept beyond what autograd keeps
  anyway.
* `find_patch_grid` finds the input size and patch size a corruption model must match.
"""
import fnmatch
import re
from functools import partial
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.utils import unwrap_model
from torch.utils.hooks import RemovableHandle

from .alignment import mean_over_blocks, paired_mse

__all__ = [
    'BlockSpec', 'find_blocks', 'select_blocks', 'parse_block_spec', 'find_patch_grid', 'PairedBlockDistance',
    'AlignmentRecording',
]

BlockSpec = Union[None, int, str, slice, Sequence[Union[int, str, slice]]]

_BLOCK_NAME = re.compile(r'(?:.+\.)?blocks\.\d+')
_STEM_PREFIXES = ('patch_embed.', 'stem.')


def _outermost(names: Sequence[str]) -> List[str]:
    """Drop names nested inside another name of the list (``blocks.0.attn`` when ``blocks.0`` is there)."""
    chosen = set(names)
    return [n for n in names if not any(n.rsplit('.', k)[0] in chosen for k in range(1, n.count('.') + 1))]


def find_blocks(model: nn.Module) -> List[str]:
    """Names of the model's transformer blocks, in execution order of ``named_modules``.

    Raises ValueError naming the model when none is found.
    """
    model = unwrap_model(model)
    names = [
        name for name, _ in model.named_modules()
        if _BLOCK_NAME.fullmatch(name) and not name.startswith(_STEM_PREFIXES)
    ]
    names = _outermost(names)
    if not names:
        raise ValueError(
            f'Could not find the transformer blocks of {type(model).__name__}: no sub-module is named '
            f"'blocks.<i>' or '<...>.blocks.<i>' outside the patch embedding. Choose the modules to align by name "
            f"pattern instead (blocks='layer*' or --rspc-blocks 'layer*'; see model.named_modules()).")
    return names


def parse_block_spec(text: Optional[str]) -> BlockSpec:
    """Parse a command-line block selection: comma-separated indices (``-1``), slices (``8:``) or name patterns.

    ``None`` or ``''`` or ``'all'`` select every block.
    """
    if text is None or text.strip() in ('', 'all'):
        return None
    items: List[Union[int, str, slice]] = []
    for item in (part.strip() for part in text.split(',')):
        if not item:
            continue
        if re.fullmatch(r'-?\d+', item):
            items.append(int(item))
        elif re.fullmatch(r'-?\d*:-?\d*', item):
            start, stop = (int(v) if v else None for v in item.split(':'))
            items.append(slice(start, stop))
        else:
            items.append(item)
    return items


def select_blocks(model: nn.Module, blocks: BlockSpec = None) -> List[str]:
    """Resolve a block selection to module names, in model order, without duplicates.

    ``blocks``: None (all of `find_blocks`), or one or a list of: an int index or a slice into `find_blocks`'s list, or
    a name pattern (``fnmatch`` style, e.g. ``'transformers.2.blocks.*'``) matched against every module name, keeping
    the outermost matches. A string with commas is parsed by `parse_block_spec`. An index out of range or a pattern
    matching nothing raises ValueError listing what is available.
    """
    if isinstance(blocks, str):
        blocks = parse_block_spec(blocks)
    if blocks is None:
        return find_blocks(model)
    if isinstance(blocks, (int, slice)):
        blocks = [blocks]
    model = unwrap_model(model)
    module_names = [name for name, _ in model.named_modules() if name]
    default: Optional[List[str]] = None
    chosen = set()
    for item in blocks:
        if isinstance(item, (int, slice)):
            if default is None:
                default = find_blocks(model)
            if isinstance(item, int):
                if not -len(default) <= item < len(default):
                    raise ValueError(
                        f'Block index {item} is out of range: {type(model).__name__} has {len(default)} blocks '
                        f'({_preview(default)}).')
                chosen.add(default[item])
            else:
                picked = default[item]
                if not picked:
                    raise ValueError(
                        f'Block slice {_slice_text(item)} selects none of the {len(default)} blocks of '
                        f'{type(model).__name__} ({_preview(default)}).')
                chosen.update(picked)
        elif isinstance(item, str):
            matched = [name for name in module_names if fnmatch.fnmatchcase(name, item)]
            if not matched:
                try:
                    hint = f'its blocks are {_preview(find_blocks(model))}'
                except ValueError:
                    hint = f'its top-level modules are {_preview([n for n in module_names if "." not in n])}'
                raise ValueError(
                    f'Block pattern {item!r} matches no module of {type(model).__name__}; {hint}.')
            chosen.update(_outermost(matched))
        else:
            raise TypeError(f'A block selection item must be an int, a slice or a str, got {item!r}.')
    return _outermost([name for name in module_names if name in chosen])


def _slice_text(s: slice) -> str:
    return f"{'' if s.start is None else s.start}:{'' if s.stop is None else s.stop}"


def _preview(names: Sequence[str], limit: int = 6) -> str:
    if len(names) <= limit:
        return ', '.join(names)
    return ', '.join(list(names[:limit // 2]) + ['...'] + list(names[-(limit // 2):]))


def _as_pair(value) -> Optional[Tuple[int, int]]:
    if value is None:
        return None
    if isinstance(value, int):
        return value, value
    value = tuple(int(v) for v in value)
    return (value[0], value[0]) if len(value) == 1 else (value[-2], value[-1])


def find_patch_grid(
        model: nn.Module,
        img_size: Union[None, int, Sequence[int]] = None,
        patch_size: Optional[int] = None,
) -> Tuple[Tuple[int, int], int]:
    """The input (height, width) and the square patch size of a patch-based model: ``((H, W), patch_size)``.

    Explicit values win. Otherwise the patch size is the stride of the token grid, ``patch_embed.img_size /
    patch_embed.grid_size`` (timm's ``PatchEmbed`` and hybrid embeddings, whose ``patch_size`` is only that of their
    last projection), else ``patch_embed.patch_size`` or ``model.patch_size``; the image size comes from
    ``patch_embed.img_size`` or the ``input_size`` of the model's pretrained cfg. Raises ValueError when either
    cannot be found, when patches are not square, or when the image size is not a multiple of the patch size.
    """
    model = unwrap_model(model)
    embed = getattr(model, 'patch_embed', None)
    name = type(model).__name__
    embed_img_size = _as_pair(getattr(embed, 'img_size', None))
    if patch_size is None:
        grid = _as_pair(getattr(embed, 'grid_size', None))
        if embed_img_size is not None and grid is not None and all(grid):
            # The token grid's stride, right also for hybrid embeddings whose patch_size is that of the last conv only.
            found = (embed_img_size[0] // grid[0], embed_img_size[1] // grid[1])
        else:
            found = _as_pair(getattr(embed, 'patch_size', None) or getattr(model, 'patch_size', None))
        if found is None:
            raise ValueError(
                f'Cannot find the patch grid of {name}: it has no patch_embed.grid_size / patch_embed.patch_size and '
                f'no patch_size. RSPC corrupts whole patches; pass patch_size= (and img_size=) explicitly.')
        if found[0] != found[1]:
            raise ValueError(f'{name} has non-square patches {found}; pass a square patch_size= explicitly.')
        patch_size = found[0]
    size = _as_pair(img_size) or embed_img_size
    if size is None:
        input_size = (getattr(model, 'pretrained_cfg', None) or {}).get('input_size')
        size = _as_pair(input_size[-2:]) if input_size else None
    if size is None:
        raise ValueError(f'Cannot find the input size of {name}; pass img_size= explicitly.')
    if min(size) < 1 or patch_size < 1:
        raise ValueError(f'Image and patch sizes must be positive, got image {size[0]}x{size[1]}, patch {patch_size}.')
    if size[0] % patch_size or size[1] % patch_size:
        raise ValueError(
            f'Image size {size[0]}x{size[1]} is not divisible by the patch size {patch_size}: RSPC corrupts whole '
            f'patches. Use an image size that is a multiple of {patch_size}.')
    return size, int(patch_size)


def _first_tensor(output) -> torch.Tensor:
    """A block's features: its output, or the first element of a tuple / list output (blocks returning (x, H, W))."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    if not isinstance(output, torch.Tensor):
        raise TypeError(f'A captured block returned {type(output).__name__}, not a tensor of features.')
    return output


def _record_output(records: List[Tuple[torch.Tensor, bool]], module: nn.Module, args, output) -> None:
    # A view taken as the block runs puts the alignment's gradient path at this point of the graph, so autograd sums
    # it into the block output in the same order as when the distance is computed right here (gradients bit-identical
    # to that formulation). A view saves no tensors: an activation checkpoint recomputes without the hook just the same.
    features = _first_tensor(output)
    records.append((features.view_as(features), torch.is_grad_enabled()))


class PairedBlockDistance:
    """Feature alignment of chosen blocks, measured over one paired forward pass.

    ``recording = alignment.record()`` hooks the chosen blocks; the model then runs once on ``cat([corrupted,
    clean])``; ``recording.measure()`` takes the hooks off and returns ``align_loss``: ``distance`` (by default
    `paired_mse`, the MSE between the corrupted and the clean half) of every chosen block's output, averaged by
    `mean_over_blocks`. Hooks exist only during that forward, so the model carries none otherwise (validation,
    inference, EMA and other copies see a plain model), and they only keep (a view of) each output: the distances are
    computed after the forward, outside any activation checkpoint, so the recomputation in backward does exactly
    what the forward did.

    Keeping the outputs costs no memory: autograd keeps each of them anyway (the next layer saves its input). A block
    output modified in place later in the forward would be measured after the change; models cannot do that to a
    tensor a following normalisation layer saved without autograd failing in backward.

    Args:
        model: any ``nn.Module`` (DDP / compiled wrappers are unwrapped to find names).
        blocks: the selection, see `select_blocks`.
        distance: maps one block's paired output to a 0-dim tensor.
    """

    def __init__(
            self,
            model: nn.Module,
            blocks: BlockSpec = None,
            distance: Callable[[torch.Tensor], torch.Tensor] = paired_mse,
    ):
        inner = unwrap_model(model)
        self.block_names: Tuple[str, ...] = tuple(select_blocks(inner, blocks))
        modules = dict(inner.named_modules())
        self.blocks: Tuple[nn.Module, ...] = tuple(modules[name] for name in self.block_names)
        self.distance = distance

    def __repr__(self) -> str:
        return f'{type(self).__name__}(blocks=[{_preview(self.block_names)}] ({len(self.block_names)}))'

    @torch.compiler.disable
    def record(self) -> 'AlignmentRecording':
        """Hook the chosen blocks until the recording's `measure` (or `close`).

        Runs eagerly: under ``torch.compile`` a graph break, so call it before any tensor operation; the forward pass
        then compiles as one graph, and the hooks' removal with the alignment loss as a second one."""
        records: List[Tuple[torch.Tensor, bool]] = []
        handles = [block.register_forward_hook(partial(_record_output, records)) for block in self.blocks]
        return AlignmentRecording(self, records, handles)

    def measure(self, records: Sequence[Tuple[torch.Tensor, bool]]) -> torch.Tensor:
        """``L_align`` from what the hooks recorded in one paired forward pass: (block output, grad mode) per block."""
        if len(records) != len(self.blocks):
            raise RuntimeError(
                f'Expected one output from each of the {len(self.blocks)} hooked blocks in this forward pass, '
                f'recorded {len(records)}. Were the hooked blocks skipped, or called more than once?')
        if torch.is_grad_enabled():
            without_grad = [name for name, (_, grad) in zip(self.block_names, records) if not grad]
            if without_grad:
                raise RuntimeError(
                    f'Block {without_grad[0]} ran with autograd off inside a forward pass that has it on (re-entrant '
                    f'activation checkpointing?): its alignment would get no gradient. Use non-re-entrant '
                    f"checkpointing, timm's default (unset TIMM_REENTRANT_CKPT).")
        return mean_over_blocks([self.distance(features) for features, _ in records])


class AlignmentRecording(NamedTuple):
    """The chosen blocks' outputs in one forward pass, recorded from `PairedBlockDistance.record` until `measure` or
    `close`."""
    alignment: PairedBlockDistance
    records: List[Tuple[torch.Tensor, bool]]
    handles: List[RemovableHandle]

    def close(self) -> None:
        """Take the hooks off the model (idempotent); call it in a ``finally`` after the forward pass."""
        for handle in self.handles:
            handle.remove()

    def measure(self) -> torch.Tensor:
        """Take the hooks off and return ``L_align`` over what they recorded."""
        self.close()
        return self.alignment.measure(self.records)
