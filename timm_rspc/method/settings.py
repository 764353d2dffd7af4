"""RSPC's settings: every hyper-parameter of the method, its default, its command-line flag and its valid range.

`RSPCSettings` is the single definition. The ``--rspc-*`` flags (`add_rspc_args`), the task (`RSPCTask`), the hook
for custom loops (`RSPCHook`), the corruption model's optimiser (`CorruptionOptimizer`) and reading a namespace or a
config file (`RSPCSettings.from_args`) are all derived from its fields, so a default or a range is written once.
Every value is checked when the settings are made, before any model, data or training is touched: a NaN, an
infinity or an out-of-range number is one ``ValueError`` naming the setting, its flag and the allowed range.

Defaults are the authors' (their RVT and FAN training scripts): rho 0.1, lambda 0.005, and C trained with Nesterov
SGD, lr 1e-4, momentum 0.9, weight decay 0.05, gradient norm clipped to 5.
"""
import dataclasses
import logging
import math
from dataclasses import dataclass, field
from numbers import Real
from typing import Any, Dict, Mapping, NamedTuple, Optional, Tuple, Union

from .capture import BlockSpec

_logger = logging.getLogger(__name__)

__all__ = ['RSPCSettings', 'Interval', 'NOISE_MODES', 'CLIP_MODES', 'check_setting', 'parse_setting', 'setting_problem']

NOISE_MODES = ('normalized', 'pixel')
CLIP_MODES = ('norm', 'normalize')


class Interval(NamedTuple):
    """A range of real numbers; ``str`` gives the wording used in error messages and ``--help``."""
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        if math.isinf(self.high):
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


def _setting(default: Any, flag: str, metavar: Optional[str], help_text: str, interval: Optional[Interval] = None,
             choices: Optional[Tuple[str, ...]] = None, optional: bool = False) -> Any:
    """A field of `RSPCSettings` with what its flag, its checks and the config reader need."""
    return field(default=default, metadata=dict(
        flag=flag, metavar=metavar, help=help_text, interval=interval, choices=choices, optional=optional))


@dataclass(frozen=True)
class RSPCSettings:
    """The hyper-parameters of RSPC, checked on construction (``ValueError`` naming the setting and its flag).

    Fields (flag, default):
        ratio (``--rspc-ratio``, 0.1): fraction rho of patches C corrupts, in (0, 1).
        align_weight (``--rspc-lambda``, 0.005): lambda, the weight of the feature alignment loss, >= 0.
        blocks (``--rspc-blocks``, all): the blocks to align, see `select_blocks`.
        patch_size (``--rspc-patch-size``, the model's): side of C's patches, see `find_patch_grid`.
        noise (``--rspc-noise``, ``normalized``): U[0, 1) noise in normalised space (the authors') or in pixel space.
        corruption_opt (``--rspc-opt``, ``sgd``): C's optimiser, a timm optimiser name (``sgd`` is Nesterov SGD).
        corruption_lr, corruption_momentum, corruption_weight_decay (``--rspc-lr``, ``--rspc-momentum``,
            ``--rspc-weight-decay``; 1e-4, 0.9, 0.05): its hyper-parameters.
        corruption_clip_grad (``--rspc-clip-grad``, 5): max norm of C's unscaled gradient; 0 or None disables.
        corruption_clip_mode (``--rspc-clip-mode``, ``norm``): ``norm`` clips to at most ``corruption_clip_grad``,
            ``normalize`` rescales to exactly that norm (the update of the authors' fp16 runs).
    """
    ratio: float = _setting(
        0.1, '--rspc-ratio', 'RHO', 'Fraction of patches the corruption model corrupts',
        Interval(0., 1., low_open=True, high_open=True))
    align_weight: float = _setting(
        0.005, '--rspc-lambda', 'LAMBDA', 'Weight of the feature alignment loss', Interval(0.))
    blocks: BlockSpec = _setting(
        None, '--rspc-blocks', 'SPEC',
        "Blocks to align: comma-separated indices ('-1'), slices ('8:') or module name patterns ('blocks.1?', "
        "Swin's 'layers.2.blocks.*') (default: every block, see README's families table)", optional=True)
    patch_size: Optional[int] = _setting(
        None, '--rspc-patch-size', 'PX',
        "Side of the corruption model's square patches in pixels (default: the backbone's own patch size where its "
        "tokens are non-overlapping image patches of at least 8 px, as in ViT, DeiT, RVT, FAN; else 16, the paper's)",
        optional=True)
    noise: str = _setting(
        'normalized', '--rspc-noise', None,
        "Noise for corrupted patches: U[0,1) in normalised space (the authors') or in pixel space",
        choices=NOISE_MODES)
    corruption_opt: str = _setting(
        'sgd', '--rspc-opt', 'OPTIMIZER', "Corruption model optimiser, a timm optimiser name ('sgd': Nesterov)")
    corruption_lr: float = _setting(
        1e-4, '--rspc-lr', 'LR', 'Corruption model learning rate', Interval(0., low_open=True))
    corruption_momentum: float = _setting(
        0.9, '--rspc-momentum', 'M', 'Corruption model optimiser momentum', Interval(0., 1., high_open=True))
    corruption_weight_decay: float = _setting(
        0.05, '--rspc-weight-decay', 'WD', 'Corruption model weight decay', Interval(0.))
    corruption_clip_grad: Optional[float] = _setting(
        5.0, '--rspc-clip-grad', 'NORM',
        'Max gradient norm of the corruption model after AMP unscaling (0 disables)', Interval(0.), optional=True)
    corruption_clip_mode: str = _setting(
        'norm', '--rspc-clip-mode', None,
        "'norm': clip the corruption model's gradient norm to --rspc-clip-grad; 'normalize': rescale it to exactly "
        "that norm, the update the authors' fp16 AMP runs made", choices=CLIP_MODES)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = check_setting(f.name, getattr(self, f.name))
            object.__setattr__(self, f.name, value)  # numbers as float, a block list as a tuple
        if self.corruption_clip_mode == 'normalize' and not self.corruption_clip_grad:
            raise ValueError(
                "--rspc-clip-mode normalize (corruption_clip_mode='normalize') rescales C's gradient to norm "
                "--rspc-clip-grad: set --rspc-clip-grad (corruption_clip_grad) > 0.")

    @classmethod
    def resolve(cls, settings: Optional['RSPCSettings'] = None, **overrides) -> 'RSPCSettings':
        """``settings`` (default: the authors') with the named fields replaced; unknown names are a TypeError."""
        unknown = sorted(set(overrides) - set(cls.field_names()))
        if unknown:
            raise TypeError(f"Unknown RSPC setting(s) {', '.join(unknown)}; the settings are {cls.field_names()}.")
        base = settings if settings is not None else cls()
        return dataclasses.replace(base, **overrides) if overrides else base

    @classmethod
    def field_names(cls) -> Tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @staticmethod
    def dest(name: str) -> str:
        """The argparse destination (and config key) of a field: ``align_weight`` -> ``rspc_lambda``."""
        return _FIELDS[name].metadata['flag'][2:].replace('-', '_')

    @classmethod
    def from_args(cls, args: Union[Mapping[str, Any], Any]) -> 'RSPCSettings':
        """Settings from an argparse namespace or a mapping (e.g. a loaded ``args.yaml``) keyed by ``rspc_*`` dests.

        A missing key takes the default; numbers given as strings (YAML reads ``1e-4`` as a string) are parsed; an
        ``rspc_*`` key that names no setting is logged as a warning (a typo would otherwise be silently ignored).
        """
        values = dict(args) if isinstance(args, Mapping) else vars(args)
        known = {cls.dest(name): name for name in cls.field_names()}
        unknown = sorted(k for k in values if k.startswith('rspc_') and k not in known)
        if unknown:
            _logger.warning(f"Ignoring unknown RSPC setting(s) {', '.join(unknown)}; known: {', '.join(known)}.")
        kwargs = {}
        for dest, name in known.items():
            if dest in values:
                value = values[dest]
                kwargs[name] = parse_setting(name, value) if isinstance(value, str) else value
        return cls(**kwargs)

    def to_args(self) -> Dict[str, Any]:
        """The settings keyed by argparse destination (``rspc_ratio``, ...), as ``from_args`` reads them."""
        return {self.dest(name): getattr(self, name) for name in self.field_names()}


_FIELDS = {f.name: f for f in dataclasses.fields(RSPCSettings)}


def parse_setting(name: str, text: str) -> Any:
    """A setting's value from its text (command line, config file): a number for numeric settings, else the text."""
    if name == 'patch_size':
        return int(text) if text.strip().lstrip('+').isdigit() else text  # else reported by check_setting
    if _FIELDS[name].metadata['interval'] is None:
        return text
    try:
        return float(text)
    except ValueError:
        return text  # reported by check_setting with the allowed range


def setting_problem(name: str, value: Any) -> Optional[str]:
    """What is wrong with ``value`` for setting ``name``, worded for a message (``must be ..., got ...``), or None."""
    meta = _FIELDS[name].metadata
    if value is None and meta['optional']:
        return None
    interval, choices = meta['interval'], meta['choices']
    if interval is not None:
        number_ok = isinstance(value, Real) and not isinstance(value, bool)
        if not number_ok or not math.isfinite(value) or value not in interval:
            return f'must be a finite number {interval}, got {value!r}'
    elif choices is not None:
        if value not in choices:
            return f"must be one of {', '.join(choices)}, got {value!r}"
    elif name == 'corruption_opt':
        if not isinstance(value, str) or not _is_timm_optimizer(value):
            return f'must be a timm optimiser name (see timm.optim.list_optimizers()), got {value!r}'
    elif name == 'patch_size':
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            return f'must be a whole number of pixels >= 1, got {value!r}'
    elif name == 'blocks':
        if not isinstance(value, (int, str, slice, list, tuple)) or isinstance(value, bool):
            return f'must be a block index, slice, name pattern or a list of them, got {value!r}'
    return None


def _is_timm_optimizer(name: str) -> bool:
    from timm.optim import get_optimizer_info
    try:
        get_optimizer_info(name.lower().split('_')[-1])  # timm's own parsing: an optional 'lookahead_' prefix
    except ValueError:
        return False
    return True


def check_setting(name: str, value: Any) -> Any:
    """``value`` for setting ``name`` in canonical form (numbers as float); ValueError naming the flag if invalid."""
    problem = setting_problem(name, value)
    if problem is not None:
        raise ValueError(f"RSPC setting {name} ({_FIELDS[name].metadata['flag']}) {problem}.")
    if value is not None and _FIELDS[name].metadata['interval'] is not None:
        return float(value)
    if isinstance(value, list):
        return tuple(value)
    return value
