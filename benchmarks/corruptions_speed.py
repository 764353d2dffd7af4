"""Speed of `timm_rspc.corruptions` on the CPU, against the reference implementation and against a model's forward pass.

    python benchmarks/corruptions_speed.py                  # both tables, printed (a few minutes on one thread)
    python benchmarks/corruptions_speed.py --write          # ... and written into benchmarks/RESULTS.md
    python benchmarks/corruptions_speed.py --quick          # a smoke run of a few seconds (CI): figures meaningless

Table 1, per corruption of the registry (``timm_rspc.corruptions.CORRUPTIONS``, so corruptions added later appear by
themselves): images/s of the torch code on a batch (16 images of 224 px, float32) against the reference
implementation (hendrycks/robustness's ``corruptions.py``, PyPI ``imagenet_c`` 0.0.3, fetched with pip and cached as
the reference test does) on one image at a time, as ImageNet-C was made. Both run in this process, on the same CPU
and with the same thread count (``--threads``, default 1: torch, OpenCV, and ``OMP_NUM_THREADS`` /
``OPENBLAS_NUM_THREADS`` / ``MKL_NUM_THREADS`` for numpy's libraries, set before numpy is loaded), in interleaved
rounds: each round times every corruption's torch batch and then its reference images, and the figures are medians
over the rounds, so a change of load on a shared machine affects both sides alike. The reference's input is what its
functions take, a PIL image (scikit-image's astronaut, chelsea, coffee through ImageNet-C's Resize(256) +
CenterCrop(224), cycled); the torch input is the same photographs as one batch. Reference functions that cannot run
here are skipped with the reason (``motion_blur`` and ``snow`` call ImageMagick through Wand: they run where Wand and
ImageMagick 6's MagickWand library are installed, as for ``tests/test_corruptions_magick.py``).

Table 2: the time of each corruption on the batch relative to one forward pass of a ViT-S-sized model on the same
batch (timm ``vit_small_patch16_224``, random initialisation, eval mode, ``torch.no_grad``), timed in the same rounds:
what corrupting on the fly adds to an evaluation. Its median over the corruptions is printed under it. Beside it,
the whole on-the-fly evaluation step of ``bench --corrupt`` relative to the clean step: ``OnTheFlyCorruption`` (one
generator per image, the corruption, the 8-bit truncation and ImageNet-C's JPEG quality 85 round trip) plus the
forward pass, over the forward pass alone (the decoding and the normalisation are the same in both).

``--write [PATH]`` replaces the block between ``<!-- corruptions_speed: begin -->`` and ``<!-- corruptions_speed:
end -->`` of PATH (default ``benchmarks/RESULTS.md``), or appends it; the rest of the file is kept.
"""
import argparse
import datetime
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

THREAD_VARIABLES = ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS')


def _threads_before_imports() -> None:
    """numpy's BLAS and OpenMP read their thread counts when loaded: set them from ``--threads`` before importing
    numpy, torch or OpenCV (torch and OpenCV are also set explicitly later)."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument('--threads', type=int, default=1)
    threads, _ = early.parse_known_args()
    for variable in THREAD_VARIABLES:
        os.environ[variable] = str(threads.threads)


if __name__ == '__main__':
    _threads_before_imports()

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / 'tests'))   # the reference test's helpers: the sdist, its adaptations, the photos
sys.path.insert(0, str(REPO_ROOT / 'benchmarks'))   # run.py's machine description
import test_corruptions_reference as reference_test  # noqa: E402
from sdists import SdistUnavailable, fetch_sdist  # noqa: E402
from test_corruptions_magick import MAGICK_ADAPTATIONS  # noqa: E402

from run import describe_machine  # noqa: E402  (benchmarks/run.py)
from timm_rspc.bench.on_the_fly import JPEG_QUALITY, OnTheFlyCorruption  # noqa: E402
from timm_rspc.corruptions import CORRUPTIONS, corrupt  # noqa: E402

MARKERS = ('<!-- corruptions_speed: begin -->', '<!-- corruptions_speed: end -->')
MODEL = 'vit_small_patch16_224'


# --- the reference -----------------------------------------------------------------------------------------------

def wand_library():
    """Wand's ``Image`` and the MagickWand library (``pip install Wand`` and ImageMagick 6's ``libmagickwand``), or
    None: then ``motion_blur`` and ``snow`` of the reference cannot run."""
    try:
        import wand.api
        import wand.image
    except ImportError:   # Wand missing, or its ImportError: 'MagickWand shared library not found'
        return None
    return wand.image.Image, wand.api.library


def load_reference(folder: Path):
    """Every function of the reference's ``corruptions.py`` (fetched like the reference tests fetch it, with the same
    textual adaptations), defined in a namespace holding the libraries it imports: {name: function}. Its module-level
    imports are not run; with Wand importable, its ``MotionImage`` class and the ``MagickMotionBlurImage`` declaration
    are defined as in ``tests/test_corruptions_magick.py``, else the functions that need them fail when called."""
    import ast
    import ctypes
    import hashlib
    import tarfile

    import cv2
    import PIL.Image
    import scipy.ndimage
    import skimage
    import skimage.filters

    sdist = fetch_sdist(reference_test.REFERENCE_PACKAGE, reference_test.REFERENCE_VERSION, 'IMAGENET_C_SDIST')
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != reference_test.REFERENCE_SHA256:
        raise SdistUnavailable(f'{sdist} is not the reference sdist (sha256 {digest})')
    with tarfile.open(sdist) as tar:
        source = tar.extractfile(reference_test.REFERENCE_MODULE).read().decode()
    for old, new, _ in reference_test.ADAPTATIONS + MAGICK_ADAPTATIONS:
        source = source.replace(old, new)
    namespace = {
        'np': np, 'sk': skimage, 'gaussian': skimage.filters.gaussian, 'PILImage': PIL.Image, 'Image': PIL.Image,
        'scizoom': scipy.ndimage.zoom, 'map_coordinates': scipy.ndimage.map_coordinates, 'cv2': cv2,
        'BytesIO': io.BytesIO, 'resource_filename': reference_test.frost_photos_loader(folder), 'ctypes': ctypes,
        '__name__': 'imagenet_c.corruptions',
    }
    body = ast.parse(source).body
    nodes = [node for node in body if isinstance(node, ast.FunctionDef)]
    magick = wand_library()
    if magick is not None:
        namespace['WandImage'], namespace['wandlibrary'] = magick
        nodes += [node for node in body if (isinstance(node, ast.ClassDef) and node.name == 'MotionImage') or (
            isinstance(node, ast.Assign) and 'MagickMotionBlurImage.argtypes' in ast.unparse(node.targets[0]))]
    exec(compile(ast.Module(body=nodes, type_ignores=[]), reference_test.REFERENCE_MODULE, 'exec'), namespace)
    return {node.name: namespace[node.name] for node in nodes if isinstance(node, ast.FunctionDef)}


# --- timing ------------------------------------------------------------------------------------------------------

def seconds(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


class Contender:
    """One corruption: its torch call on the batch and its reference calls on single images, timed round by round."""

    def __init__(self, name, batch, views, reference, severity, reference_budget):
        self.name, self.batch, self.views, self.severity = name, batch, views, severity
        self.reference = reference
        self.generator = torch.Generator().manual_seed(0)
        self.torch_times, self.reference_times, self.forward_ratios = [], [], []
        self.on_the_fly = OnTheFlyCorruption(name, severity, seed=0, jpeg_quality=JPEG_QUALITY)
        self.indices = list(range(len(batch)))
        self.step_ratios = []   # (on-the-fly corruption + forward) / forward
        self.reference_images = 0
        self.note = None
        self.reference_budget = reference_budget

    def run_torch(self) -> None:
        corrupt(self.name, self.batch, self.severity, self.generator)

    def run_on_the_fly(self) -> None:
        self.on_the_fly(self.batch, self.indices)

    def run_reference(self, count: int) -> None:
        for index in range(count):
            self.reference(self.views[index % len(self.views)], self.severity)

    def warm_up(self, max_images: int) -> None:
        """One untimed call of each side; decides how many reference images a round times (about
        ``reference_budget`` seconds, 1 .. ``max_images``); a reference that fails here is noted and left out."""
        self.run_torch()
        self.run_on_the_fly()
        if self.reference is None:
            return
        try:
            single = min(seconds(lambda: self.run_reference(1)) for _ in range(2))
        except NameError as error:   # a name its module defines from Wand, which is not importable here
            self.note = (f'the reference needs `{error.name}`, which its module defines from Wand (ImageMagick): '
                         f'pip install Wand and ImageMagick 6\'s libmagickwand (see tests/test_corruptions_magick.py)')
            self.reference = None
            return
        except Exception as error:   # noqa: BLE001 - any failure of the reference code means it cannot run here
            self.note = f'the reference fails here: {type(error).__name__}: {str(error).splitlines()[0][:120]}'
            self.reference = None
            return
        self.reference_images = max(1, min(max_images, int(self.reference_budget / max(single, 1e-6))))

    def time_round(self, forward_seconds: float) -> None:
        torch_seconds = seconds(self.run_torch)
        self.torch_times.append(torch_seconds / len(self.batch))
        self.forward_ratios.append(torch_seconds / forward_seconds)
        self.step_ratios.append((seconds(self.run_on_the_fly) + forward_seconds) / forward_seconds)
        if self.reference is not None:
            count = self.reference_images
            self.reference_times.append(seconds(lambda: self.run_reference(count)) / count)


def photographs(batch_size: int):
    """The reference test's photographs through ImageNet-C's preprocessing, cycled to ``batch_size``: the PIL views
    (the reference's input) and one (B, 3, 224, 224) float32 batch of the same pixels."""
    import skimage.data
    views = [reference_test.imagenet_c_view(getattr(skimage.data, name)()) for name in reference_test.IMAGES]
    cycled = [views[index % len(views)] for index in range(batch_size)]
    pixels = np.stack([np.asarray(view) for view in cycled])
    return views, torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255).contiguous()


def vit_forward(batch: torch.Tensor):
    import timm
    model = timm.create_model(MODEL, pretrained=False).eval()

    def forward():
        with torch.no_grad():
            model(batch)
    return forward


# --- report ------------------------------------------------------------------------------------------------------

def machine_line(threads: int) -> str:
    cpu = describe_machine(torch.device('cpu'))['cpu']
    load = ', '.join(f'{value:.2f}' for value in os.getloadavg())
    now = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M')
    return (f'{cpu}, {os.cpu_count()} logical cores, {threads} thread(s) for torch, numpy and OpenCV; load average '
            f'{load} (1, 5, 15 min) at the end; torch {torch.__version__}; {now} UTC')


def format_report(contenders, args, forward_times, machine: str) -> str:
    lines = ['## ImageNet-C corruptions on the CPU: torch vs the reference, and vs a ViT-S forward pass', '',
             f'Measured by `python benchmarks/corruptions_speed.py{" --quick" if args.quick else ""}` on {machine}. '
             f'Severity {args.severity}; torch on a batch of {args.batch_size} images of 224 px (float32), the '
             f'reference (`imagenet_c` 0.0.3) on one image at a time; medians of {args.repeats} interleaved rounds.',
             '', '| corruption | torch img/s (batch) | reference img/s (one image) | speed-up vs reference |',
             '|---|---|---|---|']
    notes = []
    for contender in contenders:
        torch_rate = 1 / statistics.median(contender.torch_times)
        if contender.reference_times:
            reference_rate = 1 / statistics.median(contender.reference_times)
            speedup = torch_rate / reference_rate
            speedup_text = f'{speedup:.1f}x' if speedup >= 1 else f'{speedup:.2g}x'   # 0.096x, not 0.1x
            lines.append(f'| {contender.name} | {torch_rate:.0f} | {reference_rate:.0f} | {speedup_text} |')
        else:
            lines.append(f'| {contender.name} | {torch_rate:.0f} | - | - |')
            notes.append(f'- {contender.name}: {contender.note}')
    lines += [''] + notes + ([''] if notes else [])
    forward = statistics.median(forward_times)
    ratios = [statistics.median(contender.forward_ratios) for contender in contenders]
    steps = [statistics.median(contender.step_ratios) for contender in contenders]
    lines += [f'Cost on the batch relative to one forward pass of `{MODEL}` (random initialisation, eval, no_grad) on '
              f'the same batch: {forward * 1000:.0f} ms per forward, {args.batch_size / forward:.1f} img/s. Last '
              f'column: the evaluation step of `bench --corrupt` (per-image generators, the corruption, 8 bits, JPEG '
              f'quality {JPEG_QUALITY} round trip, forward) over the clean step (forward).', '',
              '| corruption | ms per batch | ratio to the forward pass | on-the-fly step / clean step |',
              '|---|---|---|---|']
    for contender, ratio, step in zip(contenders, ratios, steps):
        lines.append(f'| {contender.name} | {statistics.median(contender.torch_times) * args.batch_size * 1000:.1f} | '
                     f'{ratio:.3f} | {step:.2f} |')
    lines += ['', f'Median over the {len(ratios)} corruptions: {statistics.median(ratios):.3f} of a forward pass; '
              f'on-the-fly step / clean step {statistics.median(steps):.2f} (at most {max(steps):.2f}).']
    return '\n'.join(lines) + '\n'


def write_section(path: Path, report: str) -> None:
    """Replaces this benchmark's block of ``path`` (between `MARKERS`), or appends it; the rest stays."""
    begin, end = MARKERS
    block = f'{begin}\n{report}{end}'
    previous = path.read_text() if path.exists() else ''
    if begin in previous and end in previous:
        text = previous[:previous.index(begin)] + block + previous[previous.index(end) + len(end):]
    else:
        text = previous.rstrip('\n') + ('\n\n' if previous.strip() else '') + block + '\n'
    path.write_text(text)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--threads', type=int, default=1, help='threads of torch, numpy and OpenCV (default 1)')
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--severity', type=int, default=3, choices=range(1, 6))
    parser.add_argument('--repeats', type=int, default=5, help='interleaved rounds (medians over them)')
    parser.add_argument('--reference-seconds', type=float, default=0.3,
                        help='about how long a round times each reference corruption (one image at least)')
    parser.add_argument('--corruptions', nargs='+', default=None, help='a subset of the registry (default: all)')
    parser.add_argument('--quick', action='store_true',
                        help='a smoke run of a few seconds: batch of 2, one round, one reference image')
    parser.add_argument('--write', nargs='?', const=str(REPO_ROOT / 'benchmarks' / 'RESULTS.md'), default=None,
                        metavar='PATH', help='also write the tables into PATH (default benchmarks/RESULTS.md)')
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_size, args.repeats, args.reference_seconds = 2, 1, 0.0
    unknown = set(args.corruptions or ()) - set(CORRUPTIONS)
    if unknown:
        parser.error(f'unknown corruptions {sorted(unknown)}; the registry has {", ".join(CORRUPTIONS)}')
    return args


def main(argv=None) -> str:
    args = parse_args(argv)
    for variable in THREAD_VARIABLES:
        os.environ[variable] = str(args.threads)
    torch.set_num_threads(args.threads)
    import cv2
    cv2.setNumThreads(args.threads)
    np.random.seed(0)   # the reference draws from numpy's global generator
    names = args.corruptions or list(CORRUPTIONS)
    views, batch = photographs(args.batch_size)
    with tempfile.TemporaryDirectory() as folder:
        try:
            reference = load_reference(Path(folder))
            missing_reason = 'the reference has no function of this name'
        except SdistUnavailable as error:
            reference, missing_reason = {}, f'the reference is unavailable: {error}'
        contenders = []
        for name in names:
            contender = Contender(name, batch, views, reference.get(name), args.severity, args.reference_seconds)
            if contender.reference is None:
                contender.note = missing_reason
            contender.warm_up(max_images=args.batch_size)
            contenders.append(contender)
        forward = vit_forward(batch)
        forward()
        forward_times = []
        for _ in range(args.repeats):
            forward_seconds = seconds(forward)
            forward_times.append(forward_seconds)
            for contender in contenders:
                contender.time_round(forward_seconds)
    report = format_report(contenders, args, forward_times, machine_line(args.threads))
    print(report)
    if args.write:
        write_section(Path(args.write), report)
        print(f'wrote {args.write}')
    return report


if __name__ == '__main__':
    main()
