"""Random-number-generator state of every process, saved with a checkpoint so that a resume continues exactly.

timm's checkpoints hold no RNG state: a resumed run reshuffles its data and redraws its augmentations and RSPC
noise differently from the run it continues. The state of each rank is gathered into the checkpoint (rank 0 writes
it) and each rank takes back its own on resume.
"""
import logging
import random
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist

_logger = logging.getLogger(__name__)


def capture_rng_state() -> Dict[str, Any]:
    """This process's Python, NumPy, torch CPU (and CUDA) generator states, in a ``weights_only``-loadable form."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        'python': random.getstate(),
        'numpy': {
            'name': np_name, 'keys': torch.from_numpy(np_keys.astype(np.int64)), 'pos': int(np_pos),
            'has_gauss': int(np_has_gauss), 'cached_gaussian': float(np_gauss),
        },
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    version, internal, gauss_next = state['python']
    random.setstate((version, tuple(internal), gauss_next))
    np_state = state['numpy']
    np.random.set_state((
        np_state['name'], np_state['keys'].numpy().astype(np.uint32), np_state['pos'],
        np_state['has_gauss'], np_state['cached_gaussian'],
    ))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def gather_rng_states(distributed: bool) -> List[Dict[str, Any]]:
    """The RNG state of every rank, indexed by rank (a collective: every rank must call it)."""
    state = capture_rng_state()
    if not distributed:
        return [state]
    states: List[Optional[Dict[str, Any]]] = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states


def restore_rank_rng_state(states: Optional[List[Dict[str, Any]]], rank: int, world_size: int) -> bool:
    """Take back this rank's RNG state; False (and a warning) when the checkpoint has none for this world size."""
    if not states:
        _logger.warning('Checkpoint has no RNG state (not written by timm-rspc): the resumed run will not replay '
                        'the same data order and random draws.')
        return False
    if len(states) != world_size:
        _logger.warning(f'Checkpoint RNG state is for {len(states)} processes, this run has {world_size}: '
                        'random draws will differ from an uninterrupted run.')
        return False
    restore_rng_state(states[rank])
    return True
