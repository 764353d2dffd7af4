"""Model families of the RSPC paper, registered with timm on import."""
from .._timm_compat import MODELS_MIN_VERSION, require_timm

require_timm(MODELS_MIN_VERSION, 'timm-rspc (its RVT and FAN models)')

from .checkpoint_loading import (
    CheckpointError, CheckpointMismatchError, ClassifierMismatchError, WeightsDownloadError, load_checkpoint,
    read_checkpoint, read_state_dict,
)
from . import fan  # noqa: F401  (registers the FAN family)
from . import rvt  # noqa: F401  (registers the RVT family)
from ._registry import ModelNameCollisionWarning, warn_collisions

warn_collisions()  # one warning if another package had registered any of these names (see _registry.py)
