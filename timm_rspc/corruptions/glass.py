"""ImageNet-C's glass blur in torch: a sequential chain of local pixel copies, reproduced draw for draw, batched.

Why a module of its own: the reference's pixel shuffle is a loop over every pixel in which each step reads what an
earlier step wrote, the one corruption whose natural form is sequential. It is computed here as a pointer-jumping
problem (no loop over pixels or images), and its exactness argument belongs next to it.

The reference (``glass_blur`` of ``imagenet_c/corruptions.py`` and of ``create_c/make_imagenet_c.py``, identical)::

    x = np.uint8(gaussian(np.array(x) / 255., sigma=c[0], multichannel=True) * 255)
    for i in range(c[2]):
        for h in range(224 - c[1], c[1], -1):
            for w in range(224 - c[1], c[1], -1):
                dx, dy = np.random.randint(-c[1], c[1], size=(2,))
                h_prime, w_prime = h + dy, w + dx
                x[h, w], x[h_prime, w_prime] = x[h_prime, w_prime], x[h, w]   # "swap"
    return np.clip(gaussian(x / 255., sigma=c[0], multichannel=True), 0, 1) * 255

with (sigma, max_delta, iterations) = ``SEVERITIES['glass_blur']``. Two facts decide the emulation:

- The "swap" is a copy. ``x[h, w]`` is a numpy view; the tuple on the right holds two views, the first assignment
  overwrites pixel (h, w) with pixel (h', w'), and the second writes (h, w)'s new value, which is (h', w')'s, back
  into (h', w'). So each step sets ``x[h, w] = x[h + dy, w + dx]`` and leaves the source alone: no pixel is moved
  away, pixels are duplicated and others lost.
- ``randint(-d, d)`` excludes ``d``: dy, dx lie in ``-d .. d - 1``, so at severity 1 (d = 1) every pixel copies
  itself, its upper, left or upper-left neighbour, never one below or to the right.

Since pixel p = (h, w) is written exactly once per pass (when the loop reaches it), the value it copies from its
source s = p + (dy, dx) is s's value *after* s's own step if s was visited before p (s inside the visited rectangle
``d + 1 .. H - d`` x ``d + 1 .. W - d`` and, the loop running downwards, dy > 0, or dy = 0 and dx > 0), else s's
value from before the pass. Following "copied from an already-written pixel" links from p ends, after a finite
chain (each link goes strictly back in loop order), at a pixel whose source was unwritten: p's final value is that
source's value before the pass. The links form a forest; pointer jumping (``root = root[root]``, a few rounds: the
chain lengths double each round) finds every pixel's end at once. This is exactly the loop's result for the same
draws, not a statistical imitation, so anti-diagonal wavefronts (wrong: a step reaches up to d rows and columns
away) or colour classes of non-overlapping swaps are not needed.

The draws: per pass and per image, (dx, dy) for every visited pixel in the loop's order (rows from ``H - d`` down to
``d + 1``, columns likewise), uniform over ``-d .. d - 1`` as ``randint``'s, through `draws` (one generator per
batch or one per image). At any size H x W the loop runs over ``H - d .. d + 1`` (the reference's 224 generalised).

The 8-bit quantisation after the first blur (``np.uint8``, truncation) is kept; its gradient passes straight
through, so glass_blur stays differentiable in the image. Truncation makes the result sensitive to the last bit
where the blurred value is a whole grey level (flat regions): an 8-bit image given as float32 ``k / 255`` would be
blurred from values off by up to 1.5e-5 levels and truncated a level lower at a few pixels, so input values within
1e-4 levels of a grey level are read as that level exactly (in float64), as the reference reads its uint8 image.
"""
import torch

from . import draws
from .draws import Generators
from .primitives import gaussian_filter
from .severity import constant as severity_constant

__all__ = ['SEVERITIES', 'SEVERITIES_BY_CONSTANTS', 'glass_blur', 'glass_shuffle']

# (sigma of both Gaussian blurs, max_delta d: offsets -d .. d - 1, passes of the shuffle); the reference's constants.
SEVERITIES = {'glass_blur': ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2))}
# The same per set of constants (`severity`): make_cifar_c.py's (32 px) and make_tinyimagenet_c.py's (64 px); their
# loop runs over 32 - d .. d + 1 and 64 - d .. d + 1, the image's side as here.
SEVERITIES_BY_CONSTANTS = {
    'imagenet': SEVERITIES,
    'cifar': {'glass_blur': ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))},
    'tinyimagenet': {'glass_blur': ((0.1, 1, 1), (0.5, 1, 1), (0.6, 1, 2), (0.7, 2, 1), (0.9, 2, 2))},
}


def _wide(device) -> torch.dtype:
    return torch.float32 if torch.device(device).type == 'mps' else torch.float64


def glass_shuffle(x: torch.Tensor, offsets: torch.Tensor, max_delta: int) -> torch.Tensor:
    """One pass of the reference's pixel loop on (B, C, H, W) ``x``, with ``offsets`` (B, H - 2d, W - 2d, 2) the
    (dx, dy) drawn for each visited pixel in loop order (row ``H - d - i``, column ``W - d - j`` at [i, j]):
    ``x[h, w] = x[h + dy, w + dx]`` in sequence, computed by pointer jumping (see the module docstring)."""
    batch, channels, height, width = x.shape
    d = max_delta
    if height - 2 * d <= 0 or width - 2 * d <= 0:
        return x
    device = x.device
    rows = torch.arange(height - d, d, -1, device=device)            # visited rows, in loop order
    cols = torch.arange(width - d, d, -1, device=device)
    dx, dy = offsets[..., 0].long(), offsets[..., 1].long()           # (B, h, w)
    src_row, src_col = rows.view(1, -1, 1) + dy, cols.view(1, 1, -1) + dx
    visited_row = (src_row >= d + 1) & (src_row <= height - d)
    visited_col = (src_col >= d + 1) & (src_col <= width - d)
    written = visited_row & visited_col & ((dy > 0) | ((dy == 0) & (dx > 0)))   # the source's step came first
    pixels = height * width
    flat = (rows.view(-1, 1) * width + cols.view(1, -1)).reshape(-1)           # visited pixels' flat indices
    source = torch.arange(pixels, device=device).expand(batch, pixels).clone()   # unvisited pixels keep their value
    source[:, flat] = (src_row * width + src_col).reshape(batch, -1)
    link = torch.arange(pixels, device=device).expand(batch, pixels).clone()    # self: the chain ends here
    link[:, flat] = torch.where(written, src_row * width + src_col, rows.view(1, -1, 1) * width
                                + cols.view(1, 1, -1)).reshape(batch, -1)
    for _ in range(pixels.bit_length() + 1):   # chain lengths double each round; at most log2(H W) rounds
        jumped = link.gather(1, link)
        if torch.equal(jumped, link):
            break
        link = jumped
    origin = source.gather(1, link)            # the pixel whose pre-pass value each pixel ends up with
    values = x.reshape(batch, channels, pixels)
    return values.gather(2, origin[:, None, :].expand(-1, channels, -1)).view_as(x)


def glass_blur(x: torch.Tensor, severity: int = 1, generator: Generators = None, constants: str = 'imagenet'
               ) -> torch.Tensor:
    """scikit-image's ``gaussian`` (sigma 0.7, 0.9, 1, 1.1, 1.5), truncated to 8 bits, 2, 1, 3, 2, 2 passes of the
    reference's local pixel copies (each visited pixel takes the value of the pixel at a random offset in
    ``-d .. d - 1`` rows and columns, d = 1, 2, 2, 3, 4, in the reference's sequential order: `glass_shuffle`),
    then the same ``gaussian`` again. In distribution (exact given the same draws: the reference's loop is
    reproduced step for step, see the module docstring). ``constants``: the set of severity constants (`severity`:
    ``'imagenet'``, ``'cifar'``, ``'tinyimagenet'``)."""
    sigma, max_delta, passes = severity_constant(SEVERITIES_BY_CONSTANTS, 'glass_blur', severity, constants)
    batch, _, height, width = x.shape
    wide = _wide(x.device)
    levels = x.to(wide) * 255
    # The reference reads an 8-bit image: values within float32 rounding of a grey level k (1e-4 levels; float32's
    # k / 255 is off by up to 1.5e-5) are taken as exactly k, so the truncation below sees the reference's values.
    nearest = levels.round()
    levels = levels + (torch.where((levels - nearest).abs() < 1e-4, nearest, levels) - levels).detach()
    blurred = gaussian_filter(levels / 255, sigma) * 255
    grey = blurred + (blurred.floor().clamp(0, 255) - blurred).detach()   # np.uint8: truncation, gradient through
    span = (max(height - 2 * max_delta, 0), max(width - 2 * max_delta, 0))
    for _ in range(passes):
        offsets = draws.randint(2 * max_delta, (batch, *span, 2), generator, device=x.device) - max_delta
        grey = glass_shuffle(grey, offsets, max_delta)
    return gaussian_filter(grey / 255, sigma).clamp(0, 1).to(x.dtype)
