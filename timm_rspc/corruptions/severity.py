"""ImageNet-C's five severity levels: one check, so every corruption refuses a bad level with the same message."""
from typing import Any, Mapping, Sequence

__all__ = ['LEVELS', 'constant']

LEVELS = range(1, 6)


def constant(severities: Mapping[str, Sequence[Any]], name: str, severity: int) -> Any:
    """The reference's constant of corruption ``name`` at ``severity`` (1..5) from its table ``severities``."""
    if severity not in LEVELS:
        raise ValueError(f'The corruption severity must be 1..5 (ImageNet-C levels), got {severity}.')
    return severities[name][severity - 1]
