"""Command-line flags of ``timm-rspc train``: timm's ``train.py`` flags (same names, defaults, meaning) plus RSPC's.

A timm user's command line, YAML config or ``args.yaml`` works unchanged; ``--rspc`` switches the RSPC task on. The
RSPC flags come from :func:`timm_rspc.method.add_rspc_args`. The flag list follows the train.py of timm main
1.0.29.dev0, recorded in ``tests/data/timm_train_py_flags.json`` (see :mod:`timm_rspc.train.timm_flags`).

Flags of timm's script that this trainer does not implement (:data:`UNSUPPORTED`) are defined with timm's defaults, so
that every ``args.yaml`` timm writes is read, and are refused by name when set to anything else.
"""
import argparse
import logging
from typing import Optional, Sequence, Tuple

import yaml
from timm.utils import ParseKwargs

from timm_rspc.method import add_rspc_args


_logger = logging.getLogger(__name__)

METHOD_CHANGE_FLAG = '--allow-method-change'


class ConfigError(ValueError):
    """A flag, config file or path that cannot work; raised before any compute starts."""


def _float_list(name: str):
    return dict(type=float, nargs='+', metavar=name)


def _add_dataset_args(parser: argparse.ArgumentParser) -> None:
    # Positional data dir: deprecated in timm in favour of --data-dir, still accepted.
    parser.add_argument('data', nargs='?', metavar='DIR', const=None, help='dataset root (deprecated, use --data-dir)')
    g = parser.add_argument_group('Dataset')
    g.add_argument('--data-dir', metavar='DIR', help='dataset root folder')
    g.add_argument('--dataset', metavar='NAME', default='',
                   help='"<type>/<name>" (torch/cifar10, hfds/..., wds/...); empty: image folder or tar')
    g.add_argument('--train-split', metavar='NAME', default='train', help='training split (default: train)')
    g.add_argument('--val-split', metavar='NAME', default='validation',
                   help='validation split (default: validation); empty string: no validation')
    g.add_argument('--train-num-samples', type=int, default=None, metavar='N',
                   help='samples in the train split, for iterable datasets')
    g.add_argument('--val-num-samples', type=int, default=None, metavar='N',
                   help='samples in the validation split, for iterable datasets')
    g.add_argument('--dataset-download', action='store_true', default=False,
                   help='let torch/ and tfds/ datasets download themselves')
    g.add_argument('--class-map', default='', type=str, metavar='FILENAME', help='class name -> index mapping file')
    g.add_argument('--input-img-mode', default=None, type=str, help='PIL mode images are converted to')
    g.add_argument('--input-key', default=None, type=str, help='dataset key of the images')
    g.add_argument('--target-key', default=None, type=str, help='dataset key of the labels')
    g.add_argument('--dataset-trust-remote-code', action='store_true', default=False,
                   help='allow Hugging Face datasets to run code from the dataset repository')


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group('Model')
    g.add_argument('--model', default='resnet50', type=str, metavar='MODEL', help='model name (default: resnet50)')
    g.add_argument('--pretrained', action='store_true', default=False, help='start from the pretrained weights')
    g.add_argument('--pretrained-path', default=None, type=str,
                   help='file loaded as if it were the pretrained weights (head adapted)')
    g.add_argument('--initial-checkpoint', default='', type=str, metavar='PATH',
                   help='checkpoint loaded into the model after creation')
    g.add_argument('--resume', default='', type=str, metavar='PATH',
                   help='resume model, optimiser, scheduler, scaler, EMA and RSPC state from this checkpoint')
    g.add_argument('--no-resume-opt', action='store_true', default=False,
                   help='resume the model only, not the optimiser / scaler state')
    g.add_argument('--num-classes', type=int, default=None, metavar='N', help='number of classes (model default)')
    g.add_argument('--gp', default=None, type=str, metavar='POOL', help='global pool type (model default)')
    g.add_argument('--img-size', type=int, default=None, metavar='N', help='image size (model default)')
    g.add_argument('--in-chans', type=int, default=None, metavar='N', help='input channels (default: 3)')
    g.add_argument('--input-size', default=None, nargs=3, type=int, metavar='N',
                   help='C H W, e.g. --input-size 3 224 224 (model default)')
    g.add_argument('--crop-pct', default=None, type=float, metavar='N', help='validation centre-crop fraction')
    g.add_argument('--mean', default=None, **_float_list('MEAN'), help='override the normalisation mean')
    g.add_argument('--std', default=None, **_float_list('STD'), help='override the normalisation std')
    g.add_argument('--interpolation', default='', type=str, metavar='NAME', help='resize interpolation (model default)')
    g.add_argument('-b', '--batch-size', type=int, default=128, metavar='N', help='per-process batch size (128)')
    g.add_argument('-vb', '--validation-batch-size', type=int, default=None, metavar='N',
                   help='validation batch size (default: --batch-size)')
    g.add_argument('--channels-last', action='store_true', default=False, help='channels_last memory layout')
    g.add_argument('--grad-accum-steps', type=int, default=1, metavar='N', help='batches per optimiser update (1)')
    g.add_argument('--grad-checkpointing', action='store_true', default=False,
                   help='gradient checkpointing through the model blocks')
    g.add_argument('--fast-norm', action='store_true', default=False, help="timm's experimental fast norm layers")
    g.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs,
                   help='extra create_model kwargs, e.g. --model-kwargs img_size=64 patch_size=8')
    g.add_argument('--head-init-scale', default=None, type=float, help='scale of the classifier init')
    g.add_argument('--head-init-bias', default=None, type=float, help='constant classifier bias init')
    g.add_argument('--torchcompile', nargs='?', type=str, default=None, const='inductor',
                   help='torch.compile the model with this backend (default when given: inductor)')
    g.add_argument('--torchcompile-mode', type=str, default=None, help='torch.compile mode')


def _add_device_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group('Device and distributed')
    g.add_argument('--device', default=None, type=str,
                   help='device; default: cuda when available, else cpu (timm defaults to cuda)')
    g.add_argument('--amp', action='store_true', default=False, help='automatic mixed precision')
    g.add_argument('--amp-dtype', default='float16', type=str, help='AMP dtype: float16 or bfloat16 (float16)')
    g.add_argument('--model-dtype', default=None, type=str, help='model dtype without AMP (default: float32)')
    g.add_argument('--no-ddp-bb', action='store_true', default=False, help='do not broadcast buffers in DDP')
    g.add_argument('--synchronize-step', action='store_true', default=False,
                   help='synchronise the accelerator after every step (for timing)')
    g.add_argument('--local_rank', default=0, type=int, help=argparse.SUPPRESS)
    g.add_argument('--device-modules', default=None, type=str, nargs='+',
                   help='modules imported before the model is created (e.g. model registries)')


def _add_optimizer_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group('Optimiser')
    g.add_argument('--opt', default='sgd', type=str, metavar='OPTIMIZER', help='optimiser (default: sgd)')
    g.add_argument('--opt-eps', default=None, type=float, metavar='EPSILON', help='optimiser epsilon')
    g.add_argument('--opt-betas', default=None, **_float_list('BETA'), help='optimiser betas')
    g.add_argument('--momentum', type=float, default=0.9, metavar='M', help='momentum (default: 0.9)')
    g.add_argument('--weight-decay', type=float, default=2e-5, help='weight decay (default: 2e-5)')
    g.add_argument('--clip-grad', type=float, default=None, metavar='NORM', help='gradient clipping threshold')
    g.add_argument('--clip-mode', type=str, default='norm', help='clipping mode: norm, value or agc')
    g.add_argument('--layer-decay', type=float, default=None, help='layer-wise learning-rate decay')
    g.add_argument('--layer-decay-min-scale', type=float, default=0, help='lower clamp of the layer-wise scale')
    g.add_argument('--layer-decay-no-opt-scale', type=float, default=None,
                   help='layers whose scale falls below this are not optimised')
    g.add_argument('--opt-kwargs', nargs='*', default={}, action=ParseKwargs, help='extra optimiser kwargs')


def _add_schedule_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group('Learning-rate schedule')
    g.add_argument('--sched', type=str, default='cosine', metavar='SCHEDULER', help='scheduler (default: cosine)')
    g.add_argument('--sched-on-updates', action='store_true', default=False,
                   help='step the schedule every update instead of every epoch')
    g.add_argument('--lr', type=float, default=None, metavar='LR', help='learning rate; overrides --lr-base')
    g.add_argument('--lr-base', type=float, default=0.1, metavar='LR',
                   help='lr = lr_base * global_batch / lr_base_size (default: 0.1)')
    g.add_argument('--lr-base-size', type=int, default=256, metavar='DIV', help='batch size of --lr-base (256)')
    g.add_argument('--lr-base-scale', type=str, default='', metavar='SCALE',
                   help='linear or sqrt; empty: sqrt for ada*/lamb optimisers, else linear')
    g.add_argument('--lr-noise', default=None, **_float_list('pct, pct'), help='lr noise on/off epoch fractions')
    g.add_argument('--lr-noise-pct', type=float, default=0.67, metavar='PERCENT', help='lr noise limit (0.67)')
    g.add_argument('--lr-noise-std', type=float, default=1.0, metavar='STDDEV', help='lr noise std (1.0)')
    g.add_argument('--lr-cycle-mul', type=float, default=1.0, metavar='MULT', help='cycle length multiplier')
    g.add_argument('--lr-cycle-decay', type=float, default=0.5, metavar='MULT', help='decay per cycle (0.5)')
    g.add_argument('--lr-cycle-limit', type=int, default=1, metavar='N', help='number of cycles (1)')
    g.add_argument('--lr-k-decay', type=float, default=1.0, help='k-decay of cosine / poly (1.0)')
    g.add_argument('--warmup-lr', type=float, default=1e-5, metavar='LR', help='warmup start lr (1e-5)')
    g.add_argument('--min-lr', type=float, default=0, metavar='LR', help='lr floor of cyclic schedules (0)')
    g.add_argument('--epochs', type=int, default=300, metavar='N', help='epochs to train (300)')
    g.add_argument('--epoch-repeats', type=float, default=0., metavar='N', help='dataset repeats per epoch')
    g.add_argument('--start-epoch', default=None, type=int, metavar='N', help='override the start epoch')
    g.add_argument('--decay-milestones', default=[90, 180, 270], type=int, nargs='+', metavar='MILESTONES',
                   help='epochs of multistep decay')
    g.add_argument('--decay-epochs', type=float, default=90, metavar='N', help='epochs between step decays (90)')
    g.add_argument('--warmup-epochs', type=int, default=5, metavar='N', help='warmup epochs (5)')
    g.add_argument('--warmup-prefix', action='store_true', default=False,
                   help='warmup comes before, not within, the decay schedule')
    g.add_argument('--cooldown-epochs', type=int, default=0, metavar='N', help='epochs at min_lr after the schedule')
    g.add_argument('--patience-epochs', type=int, default=10, metavar='N', help='plateau patience (10)')
    g.add_argument('--decay-rate', '--dr', type=float, default=0.1, metavar='RATE', help='lr decay rate (0.1)')


def _add_augmentation_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group('Augmentation and regularisation')
    g.add_argument('--no-aug', action='store_true', default=False, help='no training augmentation at all')
    g.add_argument('--train-crop-mode', type=str, default=None, help='training crop mode')
    g.add_argument('--scale', type=float, nargs='+', default=[0.08, 1.0], metavar='PCT',
                   help='random-resized-crop scale range (0.08 1.0)')
    g.add_argument('--ratio', type=float, nargs='+', default=[3. / 4., 4. / 3.], metavar='RATIO',
                   help='random-resized-crop aspect range (0.75 1.33)')
    g.add_argument('--hflip', type=float, default=0.5, help='horizontal flip probability (0.5)')
    g.add_argument('--vflip', type=float, default=0., help='vertical flip probability (0)')
    g.add_argument('--color-jitter', type=float, default=0.4, metavar='PCT', help='colour jitter strength (0.4)')
    g.add_argument('--color-jitter-prob', type=float, default=None, metavar='PCT', help='colour jitter probability')
    g.add_argument('--grayscale-prob', type=float, default=None, metavar='PCT', help='random grayscale probability')
    g.add_argument('--gaussian-blur-prob', type=float, default=None, metavar='PCT', help='gaussian blur probability')
    g.add_argument('--aa', type=str, default=None, metavar='NAME', help='AutoAugment / RandAugment policy')
    g.add_argument('--aug-repeats', type=float, default=0, help='repeated augmentation count (distributed only)')
    g.add_argument('--bce-loss', action='store_true', default=False, help='binary cross-entropy loss')
    g.add_argument('--bce-sum', action='store_true', default=False, help='BCE summed over classes')
    g.add_argument('--bce-target-thresh', type=float, default=None, help='binarise soft BCE targets at this value')
    g.add_argument('--bce-pos-weight', type=float, default=None, help='BCE positive weight')
    g.add_argument('--reprob', type=float, default=0., metavar='PCT', help='random erasing probability (0)')
    g.add_argument('--remode', type=str, default='pixel', help='random erasing mode (pixel)')
    g.add_argument('--recount', type=int, default=1, help='random erasing count (1)')
    g.add_argument('--mixup', type=float, default=0.0, help='mixup alpha; on when > 0')
    g.add_argument('--cutmix', type=float, default=0.0, help='cutmix alpha; on when > 0')
    g.add_argument('--cutmix-minmax', type=float, nargs='+', default=None, help='cutmix min/max area ratio')
    g.add_argument('--mixup-prob', type=float, default=1.0, help='probability of mixup or cutmix per batch (1.0)')
    g.add_argument('--mixup-switch-prob', type=float, default=0.5, help='probability of cutmix when both are on')
    g.add_argument('--mixup-mode', type=str, default='batch', help='batch, pair or elem')
    g.add_argument('--mixup-off-epoch', default=0, type=int, metavar='N', help='turn mixup off at this epoch')
    g.add_argument('--smoothing', type=float, default=0.1, help='label smoothing (0.1)')
    g.add_argument('--train-interpolation', type=str, default='random', help='training resize interpolation')
    g.add_argument('--drop', type=float, default=0.0, metavar='PCT', help='dropout rate (0)')
    g.add_argument('--drop-connect', type=float, default=None, metavar='PCT', help='deprecated, use --drop-path')
    g.add_argument('--drop-path', type=float, default=None, metavar='PCT', help='stochastic depth rate')
    g.add_argument('--drop-block', type=float, default=None, metavar='PCT', help='drop block rate')
    g = parser.add_argument_group('Batch norm')
    g.add_argument('--bn-momentum', type=float, default=None, help='BatchNorm momentum override')
    g.add_argument('--bn-eps', type=float, default=None, help='BatchNorm epsilon override')
    g.add_argument('--sync-bn', action='store_true', help='synchronised BatchNorm')
    g.add_argument('--dist-bn', type=str, default='reduce',
                   help='share BN statistics across processes after each epoch: broadcast, reduce or ""')
    g = parser.add_argument_group('Model EMA')
    g.add_argument('--model-ema', action='store_true', default=False, help='track an EMA of the weights')
    g.add_argument('--model-ema-force-cpu', action='store_true', default=False,
                   help='keep the EMA on the CPU (rank 0), no EMA validation')
    g.add_argument('--model-ema-decay', type=float, default=0.9998, help='EMA decay (0.9998)')
    g.add_argument('--model-ema-warmup', action='store_true', help='warm the EMA decay up')


def _add_misc_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group('Miscellaneous')
    g.add_argument('--seed', type=int, default=42, metavar='S', help='random seed (42)')
    g.add_argument('--worker-seeding', type=str, default='all', help='data-loader worker seeding mode (all)')
    g.add_argument('--log-interval', type=int, default=50, metavar='N', help='updates between log lines (50)')
    g.add_argument('--val-interval', type=int, default=1, metavar='N', help='epochs between validations (1)')
    g.add_argument('--recovery-interval', type=int, default=0, metavar='N',
                   help='updates between recovery checkpoints (0: none)')
    g.add_argument('--checkpoint-hist', type=int, default=10, metavar='N', help='ranked checkpoints kept (10)')
    g.add_argument('-j', '--workers', type=int, default=4, metavar='N', help='data-loading processes (4)')
    g.add_argument('--pin-mem', action='store_true', default=False, help='pin loader memory')
    g.add_argument('--no-prefetcher', action='store_true', default=False, help="disable timm's prefetcher")
    g.add_argument('--output', default='', type=str, metavar='PATH', help='output root (default: ./output/train)')
    g.add_argument('--experiment', default='', type=str, metavar='NAME',
                   help='run folder name under --output (default: date-model-size)')
    g.add_argument('--output-exists', default='error', choices=('error', 'increment', 'overwrite'),
                   help='when the run folder already holds a run (other than the one --resume continues): error '
                        '(default), increment (use NAME-1, NAME-2, ...) or overwrite')
    g.add_argument('--eval-metric', default='top1', type=str, metavar='EVAL_METRIC', help='best-checkpoint metric')
    g.add_argument('--tta', type=int, default=0, metavar='N', help='test-time augmentation factor (0)')
    g.add_argument('--use-multi-epochs-loader', action='store_true', default=False,
                   help='keep loader workers alive across epochs')
    g.add_argument('--verbose', action='store_true', default=False,
                   help='print the traceback of errors that are otherwise reported in one line')


# Flags of timm's train.py this trainer does not implement: (feature, ((flags, argparse kwargs with timm's default),
# ...)). For those, python -m timm_rspc.run_script train.py runs timm's own script, with --rspc.
UNSUPPORTED = (
    ('TorchScript', (
        (('--torchscript',), dict(action='store_true', default=False)),
        (('--fuser',), dict(default='', type=str)),
    )),
    ('augmentation splits, JSD loss, split BN', (
        (('--aug-splits',), dict(type=int, default=0)),
        (('--jsd-loss',), dict(action='store_true', default=False)),
        (('--resplit',), dict(action='store_true', default=False)),
        (('--split-bn',), dict(action='store_true', default=False)),
    )),
    ('saving training batches as images', (
        (('--save-images',), dict(action='store_true', default=False)),
    )),
    ('Weights & Biases logging', (
        (('--log-wandb',), dict(action='store_true', default=False)),
        (('--wandb-project',), dict(default=None, type=str)),
        (('--wandb-tags',), dict(default=[], type=str, nargs='+')),
        (('--wandb-resume-id',), dict(default='', type=str)),
    )),
    ('scheduled image / batch sizes', (
        (('--train-img-sizes',), dict(type=int, nargs='+', default=None)),
        (('--train-batch-sizes',), dict(type=int, nargs='+', default=None)),
        (('--train-size-probs',), dict(type=float, nargs='+', default=None)),
        (('--train-size-schedule',), dict(type=str, default='constant', choices=('constant', 'progressive'))),
        (('--train-size-schedule-spread',), dict(type=float, default=0.65)),
        (('--train-size-random-mix',), dict(type=float, default=0.1)),
        (('--train-batches-per-epoch', '--train-steps-per-epoch'), dict(type=int, default=None)),
        (('--variable-batch-loss-scale',), dict(default='none', type=str, choices=('none', 'sqrt', 'linear'))),
    )),
    ('the NaFlex loader', (
        (('--naflex-loader',), dict(action='store_true', default=False)),
        (('--naflex-train-seq-lens',), dict(type=int, nargs='+', default=[128, 256, 576, 784, 1024])),
        (('--naflex-max-seq-len',), dict(type=int, default=576)),
        (('--naflex-patch-sizes',), dict(type=int, nargs='+', default=None)),
        (('--naflex-patch-size-probs',), dict(type=float, nargs='+', default=None)),
        (('--naflex-loss-scale',), dict(default='linear', type=str, choices=('none', 'sqrt', 'linear'))),
        (('--naflex-patchify-channels-first',), dict(action='store_true', default=False)),
    )),
    ('knowledge distillation', (
        (('--kd-model-name',), dict(default=None, type=str)),
        (('--kd-distill-type',), dict(default='logit', type=str, choices=['logit', 'feature', 'token'])),
        (('--kd-loss-type',), dict(default='kl', type=str)),
        (('--distill-loss-weight',), dict(default=None, type=float)),
        (('--task-loss-weight',), dict(default=None, type=float)),
        (('--kd-temperature',), dict(default=4.0, type=float)),
        (('--kd-student-feature-dim',), dict(default=None, type=int)),
        (('--kd-teacher-feature-dim',), dict(default=None, type=int)),
        (('--kd-token-distill-type',), dict(default='soft', type=str, choices=['soft', 'hard'])),
    )),
)

# Where this trainer deliberately differs from timm's train.py defaults, and why.
DEFAULT_DIFFERENCES = {
    'device': 'default: cuda when available, else cpu (timm: cuda, which fails on a machine without a GPU)',
}


def _add_unsupported_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        'Not supported by this trainer',
        "Accepted at timm's defaults only (so that timm's args.yaml files load). For these, run timm's own\n"
        'train.py: python -m timm_rspc.run_script path/to/train.py [--rspc] ...\n' + '\n'.join(
            f"  {feature}: {' '.join(flags[0] for flags, _ in entries)}" for feature, entries in UNSUPPORTED))
    for _, entries in UNSUPPORTED:
        for flags, kwargs in entries:
            g.add_argument(*flags, **kwargs, help=argparse.SUPPRESS)


def check_unsupported(args: argparse.Namespace) -> None:
    """Refuse, by name, a flag of timm's train.py that this trainer would otherwise silently ignore."""
    for feature, entries in UNSUPPORTED:
        for flags, kwargs in entries:
            dest = flags[0][2:].replace('-', '_')
            if getattr(args, dest) != kwargs['default']:
                raise ConfigError(
                    f"{flags[0]} ({feature}) is not supported by this trainer; run timm's own train.py for it: "
                    "python -m timm_rspc.run_script path/to/train.py --rspc ...")


def add_method_change_arg(parser) -> None:
    parser.add_argument(
        METHOD_CHANGE_FLAG, action='store_true', default=False,
        help='allow --resume of a checkpoint trained with the other method (with / without --rspc)')


class _OneLineErrorParser(argparse.ArgumentParser):
    """argparse prints the whole usage (some 80 lines for this parser) before a flag's error; here the error is the
    one line, with exit status 2 as argparse's, and ``--help`` for the rest."""

    def error(self, message: str):
        self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    """The full parser: timm's training flags followed by the RSPC flags."""
    parser = _OneLineErrorParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a timm model, with RSPC when --rspc is given. Accepts timm train.py's flags.",
        epilog="Differences from timm's train.py:\n" + '\n'.join(
            f'  --{dest.replace("_", "-")} {why}' for dest, why in DEFAULT_DIFFERENCES.items()) +
        '\n  new flags: --output-exists, --allow-method-change, --verbose and the RSPC flags')
    add_config_arg(parser)
    _add_dataset_args(parser)
    _add_model_args(parser)
    _add_device_args(parser)
    _add_optimizer_args(parser)
    _add_schedule_args(parser)
    _add_augmentation_args(parser)
    _add_misc_args(parser)
    _add_unsupported_args(parser)
    add_method_change_arg(add_rspc_args(parser))
    return parser


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('-c', '--config', default='', type=str, metavar='FILE',
                        help='YAML file of flag defaults (keys as in args.yaml); command-line flags win')


def apply_config_file(parser: argparse.ArgumentParser, path: str) -> None:
    """Make the YAML file's values the parser's defaults; keys that are not flags are named in a warning.

    timm's train.py takes unknown keys silently; here a typo in a config is at least seen. Keys of run-time state
    (``prefetcher``, ``distributed``, ...) that an ``args.yaml`` may hold are skipped without a warning.
    """
    try:
        with open(path, 'r') as f:
            config = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file '{path}' is not valid YAML: {e}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of flag names to values")
    known = {action.dest for action in parser._actions}
    # args.yaml of a finished run also holds values the trainer derives at run time; those are not flags.
    config = {k.replace('-', '_'): v for k, v in config.items() if k not in _DERIVED_KEYS}
    unknown = sorted(set(config) - known)
    if unknown:
        _logger.warning(f"Config file '{path}': ignoring keys that are not flags of this trainer: {', '.join(unknown)}")
    parser.set_defaults(**{k: v for k, v in config.items() if k in known})


# Keys written into args.yaml that are state of a run, not flags.
_DERIVED_KEYS = ('prefetcher', 'distributed', 'world_size', 'rank', 'config')


def parse_args(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> Tuple[argparse.Namespace, str]:
    """Parse ``argv`` (after applying a ``-c`` YAML config) and return ``(args, args_yaml_text)``."""
    config_parser = argparse.ArgumentParser(add_help=False)
    add_config_arg(config_parser)
    config_args, _ = config_parser.parse_known_args(argv)
    parser = build_parser(prog)
    if config_args.config:
        apply_config_file(parser, config_args.config)
    args = parser.parse_args(argv)
    check_unsupported(args)
    if config_args.config and args.resume:
        _run_folder_from_command_line(args, argv)
    return args, args_to_yaml(args)


def _run_folder_from_command_line(args: argparse.Namespace, argv: Optional[Sequence[str]]) -> None:
    """A ``-c`` file's ``output`` / ``experiment`` do not choose where a ``--resume`` writes, only the command line
    does: such a file is usually the run's own ``args.yaml``, whose folder values name the folder it was started in,
    not necessarily the checkpoint's folder now (moved, copied, another working directory). Without them on the
    command line, the resume continues in the checkpoint's own folder."""
    folder_parser = argparse.ArgumentParser(add_help=False)
    folder_parser.add_argument('--output', default=None)
    folder_parser.add_argument('--experiment', default=None)
    given, _ = folder_parser.parse_known_args(argv)
    if given.output is None and given.experiment is None:
        args.output = args.experiment = ''


def args_to_yaml(args: argparse.Namespace) -> str:
    return yaml.safe_dump(vars(args), default_flow_style=False)
