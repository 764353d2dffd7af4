"""Model families of the RSPC paper, registered with timm on import."""
from .checkpoint_loading import (
    CheckpointError, CheckpointMismatchError, load_checkpoint, read_checkpoint, read_state_dict,
)
from . import rvt  # noqa: F401  (registers rvt_* with timm)
