"""What this package needs from timm that older timm releases lack: one place, at the bottom layer.

Each name is timm's own where the installed timm has it; otherwise a small local fallback, whose docstring says which
timm release brings the original. Nothing here imports the rest of the package.

`require_timm(version, feature)` is how a part that needs a newer timm says so: one line, raised only when the part
is used (``import timm_rspc`` and the parts that run on older timm never call it for themselves).
"""
import re
from typing import Optional

import timm

__all__ = ['TIMM_VERSION', 'timm_version_at_least', 'require_timm', 'TimmVersionError', 'get_device_dtype']


def _parse(version: str) -> tuple:
    """'1.0.29.dev0' -> (1, 0, 29): a pre-release or dev build counts as its release."""
    match = re.match(r'(\d+)(?:\.(\d+))?(?:\.(\d+))?', version)
    return tuple(int(part or 0) for part in match.groups()) if match else (0, 0, 0)


TIMM_VERSION = timm.__version__


def timm_version_at_least(version: str) -> bool:
    """Whether the installed timm is ``version`` or newer (a ``.devN`` build counts as its release)."""
    return _parse(TIMM_VERSION) >= _parse(version)


class TimmVersionError(ImportError):
    """A part of timm-rspc was used with a timm older than the one it needs (message: one line, both versions)."""


def require_timm(version: str, feature: str, cause: Optional[BaseException] = None) -> None:
    """Raise `TimmVersionError` (one line naming ``feature``, the timm it needs and the installed one) if too old."""
    if timm_version_at_least(version) and cause is None:
        return
    error = TimmVersionError(
        f'{feature} needs timm>={version}; the installed timm is {TIMM_VERSION} '
        f'(pip install "timm>={version}")')
    if cause is not None:
        raise error from cause
    raise error


try:
    from timm.layers import get_device_dtype
except ImportError:  # timm < 1.0.29
    def get_device_dtype(module, device=None, dtype=None):
        """Factory ``device`` / ``dtype`` kwargs resolved from a parent module's first parameter.

        Local copy of ``timm.layers.get_device_dtype`` (timm 1.0.29 brings the original): explicit values win,
        missing ones come from the module's first parameter, if it has one.
        """
        parameter = next(module.parameters(), None)
        if parameter is not None:
            if device is None:
                device = parameter.device
            if dtype is None:
                dtype = parameter.dtype
        return {'device': device, 'dtype': dtype}
