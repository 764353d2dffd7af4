"""Registering the package's model names in timm's registry, with one warning for names another package has.

timm's registry is one flat namespace: another package (``alibaba/easyrobust`` registers ``rvt_*`` and
``fan_*_p16_224``) may hold the same names, and the module imported last wins. timm warns once per name, without
saying whose model ``timm.create_model`` builds afterwards. Here each family registers through `register_model`,
which notes a name that a module outside this package already registered (and silences timm's per-name warning for
it); `warn_collisions` then issues one `ModelNameCollisionWarning` for the whole import, naming both modules, the
names, and what ``create_model`` builds now.

Choosing: the last import wins. ``import timm_rspc`` after the other package: its names build timm-rspc's models (the
warning says so). ``import timm_rspc`` first and the other package after: the names build the other package's models
(timm prints its own warnings then). timm-rspc's RSPC names (``rvt_s_rspc``, ``fan_s_rspc``, ...) are its own either
way.
"""
import re
import warnings
from collections import defaultdict
from typing import Callable, Dict, List, Tuple

from timm.models import is_model, model_entrypoint, register_model as timm_register_model

__all__ = ['ModelNameCollisionWarning', 'register_model', 'warn_collisions', 'collisions']

_PACKAGE = __name__.split('.')[0]
_collisions: List[Tuple[str, str, str]] = []  # (name, other module, this package's module), not yet warned about


class ModelNameCollisionWarning(UserWarning):
    """``import timm_rspc`` replaced model names that another package had registered in timm's registry."""


def _previous_owner(name: str) -> str:
    """The module whose entrypoint timm's registry holds for ``name`` ('' if none)."""
    if not is_model(name):
        return ''
    return getattr(model_entrypoint(name), '__module__', '') or '?'


def register_model(fn: Callable) -> Callable:
    """timm's ``register_model``, noting (for `warn_collisions`) a name another package already registered."""
    name, module = fn.__name__, fn.__module__
    owner = _previous_owner(name)
    foreign = bool(owner) and owner.split('.')[0] != _PACKAGE
    with warnings.catch_warnings():
        if owner:  # another package's name: reported once for all names by warn_collisions; ours: a reload
            warnings.filterwarnings('ignore', message=rf'Overwriting {re.escape(name)} in registry')
        timm_register_model(fn)
    if foreign:
        _collisions.append((name, owner, module))
    return fn


def collisions() -> Dict[str, List[str]]:
    """The names not yet warned about, by the module that had registered them first."""
    by_owner: Dict[str, List[str]] = defaultdict(list)
    for name, owner, _ in _collisions:
        by_owner[owner].append(name)
    return dict(by_owner)


def warn_collisions(stacklevel: int = 2) -> None:
    """One `ModelNameCollisionWarning` for every name replaced since the last call (none if there are none)."""
    if not _collisions:
        return
    by_owner = collisions()
    ours = sorted({module for _, _, module in _collisions})
    names = [name for name, _, _ in _collisions]
    _collisions.clear()
    owners = '; '.join(f'{owner} ({", ".join(sorted(n))})' for owner, n in sorted(by_owner.items()))
    others = ', '.join(sorted({owner.split('.')[0] for owner in by_owner}))
    warnings.warn(
        f'timm-rspc replaced {len(names)} model name{"s" * (len(names) != 1)} that another module had registered in '
        f"timm's registry: {owners}. timm.create_model('{names[0]}') and the others now build timm-rspc's models "
        f'({", ".join(ours)}). To build the other ones instead, import timm_rspc before {others} (the last import '
        "wins); timm-rspc's RSPC names (rvt_s_rspc, fan_s_rspc, ...) are unaffected.",
        ModelNameCollisionWarning, stacklevel=stacklevel + 1)
