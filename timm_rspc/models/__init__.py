"""Model families of the RSPC paper, registered with timm on import."""
from .checkpoint_loading import (
    CheckpointError, CheckpointMismatchError, ClassifierMismatchError, WeightsDownloadError, load_checkpoint,
    read_checkpoint, read_state_dict,
)
from . import fan  # noqa: F401  (registers the FAN family)
from . import rvt  # noqa: F401  (registers the RVT family)
