"""``timm-rspc corrupt SRC DST``: write a corrupted copy of an image folder in ImageNet-C's layout.

    timm-rspc corrupt /data/imagenet/val /data/my-imagenet-c                  # 15 corruptions (those available) x 5
    timm-rspc corrupt photos/ photos-c/ --corruptions fog,contrast --severities 3 --device cuda
    timm-rspc bench --model NAME --imagenet-c /data/my-imagenet-c --allow-partial

Also the corruption choice flags ``bench --corrupt`` shares (`add_corruption_choice`).
"""
import argparse
import sys

from ._errors import CommandFailed, reported_errors


def add_corruption_choice(group) -> None:
    """--corruptions, --extra, --severities, --corruption-seed, --corruption-constants (defaults:
    `bench.on_the_fly.CorruptOptions`)."""
    from timm_rspc.bench.on_the_fly import CONSTANTS_NAMES, CorruptOptions, default_corruptions
    from timm_rspc.corruptions import NATIVE_SIZES
    defaults = CorruptOptions()
    names, everything = default_corruptions(), default_corruptions(extra=True)
    group.add_argument('--corruptions', metavar='NAME,...',
                       help=f"exactly these corruptions (default: ImageNet-C's corruptions available in "
                            f"timm_rspc.corruptions, its registry minus the extra ones: {', '.join(names)})")
    group.add_argument('--extra', action='store_true',
                       help=f"the default corruptions plus the extra ones "
                            f"({', '.join(n for n in everything if n not in names)})")
    severities = ','.join(map(str, defaults.severities))
    group.add_argument('--severities', default=severities, metavar='N,...',
                       help=f'severity levels (default: {severities})')
    group.add_argument('--corruption-seed', type=int, default=defaults.seed, metavar='N',
                       help=f'seed of the random corruptions; each image draws from its own generator seeded by '
                            f'(seed, corruption, severity, its index in the folder) (default: {defaults.seed})')
    group.add_argument('--corruption-constants', choices=tuple(CONSTANTS_NAMES), default=defaults.constants,
                       help="the reference's severity constants: " + ', '.join(
                           f'{name}: {made} ({NATIVE_SIZES[name]} px)' for name, made in CONSTANTS_NAMES.items())
                       + f'; for images of about that size (default: {defaults.constants})')


def add_jpeg_choice(group) -> None:
    """``bench --corrupt``'s --corrupt-jpeg-quality (default: `bench.on_the_fly.CorruptOptions`)."""
    from timm_rspc.bench.on_the_fly import CorruptOptions
    quality = CorruptOptions().jpeg_quality
    group.add_argument('--corrupt-jpeg-quality', type=int, default=quality, metavar='Q',
                       help=f"JPEG round trip of the corrupted 8-bit images on the device, as ImageNet-C's saved "
                            f"files (Pillow's libjpeg-turbo, bit for bit), so the numbers equal those of the saved "
                            f"tree 'timm-rspc corrupt' writes (Tiny-ImageNet-C's too); 0: none, as CIFAR-10-C's "
                            f"arrays (default: {quality})")


def corruption_choice(args: argparse.Namespace, **options):
    """The `bench.on_the_fly.CorruptOptions` of the flags `add_corruption_choice` added (one-line ValueErrors)."""
    from timm_rspc.bench.on_the_fly import CorruptOptions, parse_list
    return CorruptOptions(
        corruptions=parse_list(args.corruptions, '--corruptions') if args.corruptions else None, extra=args.extra,
        severities=parse_list(args.severities, '--severities', int), seed=args.corruption_seed,
        constants=args.corruption_constants, **options)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from timm_rspc.bench.corrupt_tree import BATCH_SIZE, CROP, JPEG_QUALITY, RESIZE, WORKERS
    parser.add_argument('src', metavar='SRC', help='image folder: SRC/<class>/<image> (e.g. ImageNet val)')
    parser.add_argument('dst', metavar='DST', help='output: DST/<corruption>/<severity>/<class>/<file>.JPEG; a new '
                                                   'folder, or one this command wrote (it continues it)')
    g = parser.add_argument_group('Corruptions')
    add_corruption_choice(g)
    f = parser.add_argument_group('Images')
    f.add_argument('--resize', type=int, default=RESIZE, metavar='N',
                   help=f'shorter side resized to N (bilinear) before the crop (default: {RESIZE}, as ImageNet-C)')
    f.add_argument('--crop', type=int, default=CROP, metavar='N',
                   help=f'center crop N x N, the image that is corrupted and saved (default: {CROP}, as ImageNet-C)')
    f.add_argument('--quality', type=int, default=JPEG_QUALITY, metavar='Q',
                   help=f'JPEG quality (default: {JPEG_QUALITY}, as ImageNet-C; Pillow, optimize=True)')
    r = parser.add_argument_group('Run')
    r.add_argument('--device', help='where the corruptions run (default: cuda if available, else cpu)')
    r.add_argument('-b', '--batch-size', type=int, default=BATCH_SIZE, metavar='N',
                   help=f'images per batch (default {BATCH_SIZE})')
    r.add_argument('-j', '--workers', type=int, default=WORKERS, metavar='N',
                   help=f'image decoding processes and JPEG writing threads (default {WORKERS})')
    r.add_argument('--no-progress', action='store_true', help='no progress bars')


def run(args: argparse.Namespace) -> int:
    from timm_rspc.bench.corrupt_tree import CorruptInterrupted, write_corrupted_tree
    try:
        with reported_errors('corrupt'):
            choice = corruption_choice(args)
            out = write_corrupted_tree(
                args.src, args.dst, corruptions=choice.corruptions, extra=choice.extra, severities=choice.severities,
                seed=choice.seed, constants=choice.constants, resize=args.resize, crop=args.crop,
                quality=args.quality,
                device=args.device, batch_size=args.batch_size, workers=args.workers,
                progress=not args.no_progress and sys.stderr.isatty())
    except CorruptInterrupted as e:
        print(f"\ntimm-rspc corrupt: interrupted: {e.written} of {e.total} files written in '{e.output}' (every "
              f"file there is complete); run the same command again to write the rest.", file=sys.stderr)
        raise CommandFailed(130) from None
    done = (f"timm-rspc corrupt: {out['written']} files written, {out['skipped']} already there: '{args.dst}' "
            f"({len(out['splits'])} corruption x severity splits).")
    if out['imagenet_classes']:
        from timm_rspc.bench.reference import IMAGENET_C_CORRUPTIONS, IMAGENET_C_SEVERITIES
        complete = all(f'{c}/{s}' in out['splits'] for c in IMAGENET_C_CORRUPTIONS for s in IMAGENET_C_SEVERITIES)
        print(f"{done} Evaluate it with: timm-rspc bench --model NAME --imagenet-c {args.dst}"
              + ('' if complete else ' --allow-partial'))
    else:
        print(f"{done} Its class folders are not ImageNet WordNet ids, which bench --imagenet-c needs; evaluate the "
              f"source with: timm-rspc bench --model NAME --corrupt {args.src}")
    return 0
