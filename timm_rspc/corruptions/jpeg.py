"""Baseline JPEG as Pillow writes and reads it (libjpeg-turbo: 4:2:0, ``islow`` integer DCT, fancy upsampling), in
torch integer arithmetic on batches, for ImageNet-C's ``jpeg_compression``.

Each step follows libjpeg-turbo's fixed-point definition (the values below are its constants):

- RGB -> YCbCr with 16-bit fixed-point weights (``jccolor.c``); chroma averaged over 2 x 2 pixels with the bias
  alternating 1, 2 along a row (``jcsample.c``, ``h2v2_downsample``);
- the accurate integer forward DCT of 8 x 8 blocks of samples - 128 (``jfdctint.c``, LL&M with 13-bit constants,
  results scaled by 8) and quantisation by ``8 * q`` through libjpeg-turbo's reciprocal multiplication
  (``jcdctmgr.c``, ``compute_reciprocal`` / ``quantize``), q the Annex K tables scaled for the quality as
  ``jpeg_set_quality(quality, force_baseline=TRUE)`` does (``jcparam.c``);
- decoding: dequantisation, the accurate integer inverse DCT (``jidctint.c``) with its range-limit table, fancy
  (triangular) 2 x 2 chroma upsampling with biases 8 / 7 and the edge rows and columns repeated (``jdsample.c``,
  ``jdmainct.c``), YCbCr -> RGB with its tables (``jdcolor.c``).

Entropy coding is lossless and left out. Any image size (partial MCUs filled as libjpeg fills them). Not
differentiable (rounding at every step).

Speed: each 1-D pass of a DCT is linear in its 8 inputs up to its final descaling (the butterflies multiply and add
integers only), so a pass is one product with an exact integer 8 x 8 matrix (derived from the butterflies themselves,
`_dct_matrices`) followed by the pass's rounding shift. Where float64 exists (CPU, CUDA) the planes are coded that
way, in float64, whose 53-bit significand holds every intermediate exactly (they stay below 2^32), with the 8 x 8
blocks laid out as (8, 8, blocks) so that each pass is one large matrix product; the colour conversions and chroma
resampling run in int32 (their values stay below 2^24). Without float64 (Apple's MPS) the butterflies run on int64
tensors as written. Both give the same integers.
"""

import torch

from .constant_cache import constant_cache

__all__ = ['jpeg_round_trip', 'quantization_tables']

_LUMA = (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
         14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
         49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99)
_CHROMA = (17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
           47, 66, 99, 99, 99, 99, 99, 99) + (99,) * 32


def _fix16(value: float) -> int:
    return int(value * 65536 + 0.5)


def quantization_tables(quality: int):
    """(luminance, chrominance) 8 x 8 int64 tables of ``jpeg_set_quality(quality, TRUE)``."""
    return [table.clone() for table in _quantization_tables(quality)]


@constant_cache(maxsize=128)
def _quantization_tables(quality: int):
    quality = min(max(quality, 1), 100)
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    tables = []
    for base in (_LUMA, _CHROMA):
        table = (torch.tensor(base, dtype=torch.int64) * scale + 50) // 100
        tables.append(table.clamp(1, 255).view(8, 8))
    return tables


def _descale(value: torch.Tensor, bits: int) -> torch.Tensor:
    return (value + (1 << (bits - 1))) >> bits


def _linear(value: torch.Tensor, bits: int) -> torch.Tensor:
    """No descaling: the butterflies' exact linear combination before the rounding shift (`_dct_matrices`)."""
    return value


def _fdct_1d(d: torch.Tensor, first: bool, _descale=_descale) -> torch.Tensor:
    """One pass of ``jpeg_fdct_islow`` along the last axis (8 samples); ``_descale=_linear`` leaves out the final
    rounding shifts."""
    d0, d1, d2, d3, d4, d5, d6, d7 = d.unbind(-1)
    t0, t7, t1, t6, t2, t5, t3, t4 = d0 + d7, d0 - d7, d1 + d6, d1 - d6, d2 + d5, d2 - d5, d3 + d4, d3 - d4
    t10, t13, t11, t12 = t0 + t3, t0 - t3, t1 + t2, t1 - t2
    if first:
        out0, out4, bits = (t10 + t11) << 2, (t10 - t11) << 2, 11
    else:
        out0, out4, bits = _descale(t10 + t11, 2), _descale(t10 - t11, 2), 15
    z1 = (t12 + t13) * 4433
    out2 = _descale(z1 + t13 * 6270, bits)
    out6 = _descale(z1 - t12 * 15137, bits)
    z1, z2, z3, z4 = t4 + t7, t5 + t6, t4 + t6, t5 + t7
    z5 = (z3 + z4) * 9633
    t4, t5, t6, t7 = t4 * 2446, t5 * 16819, t6 * 25172, t7 * 12299
    z1, z2, z3, z4 = z1 * -7373, z2 * -20995, z3 * -16069 + z5, z4 * -3196 + z5
    out7 = _descale(t4 + z1 + z3, bits)
    out5 = _descale(t5 + z2 + z4, bits)
    out3 = _descale(t6 + z2 + z3, bits)
    out1 = _descale(t7 + z1 + z4, bits)
    return torch.stack([out0, out1, out2, out3, out4, out5, out6, out7], dim=-1)


def _idct_1d(w: torch.Tensor, bits: int, _descale=_descale) -> torch.Tensor:
    """One pass of ``jpeg_idct_islow`` along the last axis, descaled by ``bits`` (11, then 18); ``_descale=_linear``
    leaves out the final rounding shifts."""
    w0, w1, w2, w3, w4, w5, w6, w7 = w.unbind(-1)
    z1 = (w2 + w6) * 4433
    tmp2, tmp3 = z1 - w6 * 15137, z1 + w2 * 6270
    tmp0, tmp1 = (w0 + w4) << 13, (w0 - w4) << 13
    tmp10, tmp13, tmp11, tmp12 = tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2
    z1, z2, z3, z4 = w7 + w1, w5 + w3, w7 + w3, w5 + w1
    z5 = (z3 + z4) * 9633
    tmp0, tmp1, tmp2, tmp3 = w7 * 2446, w5 * 16819, w3 * 25172, w1 * 12299
    z1, z2, z3, z4 = z1 * -7373, z2 * -20995, z3 * -16069 + z5, z4 * -3196 + z5
    tmp0, tmp1, tmp2, tmp3 = tmp0 + z1 + z3, tmp1 + z2 + z4, tmp2 + z2 + z3, tmp3 + z1 + z4
    return torch.stack([_descale(tmp10 + tmp3, bits), _descale(tmp11 + tmp2, bits), _descale(tmp12 + tmp1, bits),
                        _descale(tmp13 + tmp0, bits), _descale(tmp13 - tmp0, bits), _descale(tmp12 - tmp1, bits),
                        _descale(tmp11 - tmp2, bits), _descale(tmp10 - tmp3, bits)], dim=-1)


@constant_cache(maxsize=None)
def _dct_matrices():
    """The four 1-D passes as (integer matrix, rounding bits per output): forward rows, forward columns, inverse
    columns, inverse rows. Output j of a pass is ``descale(sum_k M[j, k] * input_k, bits[j])``; M comes from running
    the butterflies on the unit vectors without their final shifts. The forward pass 1 scales outputs 0 and 4 by a
    shift (no rounding: 0 bits); its others and pass 2 round by 11 / 15 and 2 / 15 bits, the inverse by 11, then
    18."""
    unit = torch.eye(8, dtype=torch.int64)
    forward_rows = _fdct_1d(unit, True, _linear).T
    forward_columns = _fdct_1d(unit, False, _linear).T
    inverse = _idct_1d(unit, 0, _linear).T
    return ((forward_rows, (0, 11, 11, 11, 0, 11, 11, 11)), (forward_columns, (2, 15, 15, 15, 2, 15, 15, 15)),
            (inverse, (11,) * 8), (inverse, (18,) * 8))


@constant_cache(maxsize=128)
def _reciprocals_of(quality: int):
    """`_reciprocals` of the tables ``8 * q`` of ``quality`` (luminance, chrominance)."""
    return tuple(_reciprocals(table * 8) for table in _quantization_tables(quality))


def _reciprocals(divisor: torch.Tensor):
    """libjpeg-turbo's ``compute_reciprocal`` (16-bit DCT elements, the SIMD build): per divisor the reciprocal,
    the rounding correction and the shift with ``q = ((|t| + correction) * reciprocal) >> shift``."""
    recips, corrs, shifts = [], [], []
    for d in divisor.flatten().tolist():
        b = d.bit_length() - 1
        r = 16 + b
        fq, fr = (1 << r) // d, (1 << r) % d
        c = d // 2
        if fr == 0:
            fq, r = fq >> 1, r - 1
        elif fr <= d // 2:
            c += 1
        else:
            fq += 1
        recips.append(fq)
        corrs.append(c)
        shifts.append(r)
    shape = divisor.shape
    return (torch.tensor(recips).view(shape), torch.tensor(corrs).view(shape), torch.tensor(shifts).view(shape))


def _blocks(plane: torch.Tensor) -> torch.Tensor:
    """(B, H, W) -> (B, H/8, W/8, 8, 8)."""
    batch, height, width = plane.shape
    return plane.view(batch, height // 8, 8, width // 8, 8).transpose(2, 3)


def _unblocks(blocks: torch.Tensor) -> torch.Tensor:
    batch, rows, cols = blocks.shape[:3]
    return blocks.transpose(2, 3).reshape(batch, rows * 8, cols * 8)


def _code_plane_int64(plane: torch.Tensor, table: torch.Tensor, reciprocals) -> torch.Tensor:
    """8-bit samples -> forward DCT, quantisation, dequantisation, inverse DCT -> 8-bit samples, on int64 tensors
    (the butterflies as libjpeg-turbo writes them: for devices without float64)."""
    blocks = _blocks(plane.long()) - 128
    coefficients = _fdct_1d(_fdct_1d(blocks, True).transpose(-1, -2), False).transpose(-1, -2)
    recip, corr, shift = (t.to(plane.device) for t in reciprocals)
    magnitude = ((coefficients.abs() + corr) * recip) >> shift
    quantised = torch.where(coefficients < 0, -magnitude, magnitude)
    dequantised = quantised * table.to(plane.device)
    columns = _idct_1d(dequantised.transpose(-1, -2), 11).transpose(-1, -2)   # pass 1 over columns
    values = _idct_1d(columns, 18)                                            # pass 2 over rows
    masked = values & 1023                                                    # the range-limit table
    samples = torch.where(masked < 128, masked + 128, torch.where(
        masked < 512, torch.full_like(masked, 255), torch.where(masked < 896, torch.zeros_like(masked), masked - 896)))
    return _unblocks(samples).to(plane.dtype)


def _pass(values: torch.Tensor, matrix: torch.Tensor, bits, dim: int) -> torch.Tensor:
    """One 1-D DCT pass on float64 blocks laid out (8 rows, 8 columns, blocks), along ``dim`` (0: down the columns,
    1: along the rows): the exact integer product, then ``(v + 2^(bits - 1)) >> bits`` per output (exact in
    float64: a power-of-two scale and a floor)."""
    shape = [8, 1, 1] if dim == 0 else [1, 8, 1]
    scale = torch.tensor([2.0 ** -b for b in bits], dtype=values.dtype, device=values.device).view(shape)
    offset = torch.tensor([0.5 if b else 0.0 for b in bits], dtype=values.dtype, device=values.device).view(shape)
    matrix = matrix.to(dtype=values.dtype, device=values.device)
    if dim == 0:   # one (8, 8) x (8, 8 * blocks) product
        product = (matrix @ values.view(8, -1)).view(values.shape)
    else:          # the same (8, 8) matrix against each of the 8 rows' (8, blocks)
        product = torch.matmul(matrix, values)
    return product.mul_(scale).add_(offset).floor_()   # in place: fresh large buffers cost page faults on the CPU


def _code_plane_float64(plane: torch.Tensor, table: torch.Tensor, reciprocals) -> torch.Tensor:
    """`_code_plane_int64`'s integers from float64 matrix products (see the module's note on speed)."""
    batch, height, width = plane.shape
    blocks = torch.empty((8, 8, batch, height // 8, width // 8), dtype=torch.float64, device=plane.device)
    blocks.copy_(plane.view(batch, height // 8, 8, width // 8, 8).permute(2, 4, 0, 1, 3))   # (row y, column x, block)
    blocks = blocks.view(8, 8, -1).sub_(128)
    (forward_rows, bits_1), (forward_columns, bits_2), (inverse, bits_3), (_, bits_4) = _dct_matrices()
    coefficients = _pass(_pass(blocks, forward_rows, bits_1, dim=1), forward_columns, bits_2, dim=0)
    recip, corr, shift = (t.to(dtype=torch.float64, device=plane.device).view(8, 8, 1) for t in reciprocals)
    # quantisation: ((|c| + corr) * recip) >> shift (below 2^40 before the shift), then dequantisation
    factor = recip * torch.exp2(-shift)
    dequantised = coefficients.abs().add_(corr).mul_(factor).floor_().mul_(
        table.to(dtype=torch.float64, device=plane.device).view(8, 8, 1)).copysign_(coefficients)
    values = _pass(_pass(dequantised, inverse, bits_3, dim=0), inverse, bits_4, dim=1)
    # libjpeg's range-limit table on the 10 low bits: with n = (v + 128) mod 1024, n up to 255 is kept, 256..639
    # saturates to 255, 640..1023 wraps to 0.
    wrapped = values.add_(128).remainder_(1024)
    samples = wrapped.masked_fill_(wrapped >= 640, 0.).clamp_(max=255)
    out = torch.empty_like(plane)
    out.view(batch, height // 8, 8, width // 8, 8).permute(2, 4, 0, 1, 3).copy_(samples.view(8, 8, batch, height // 8,
                                                                                              width // 8))
    return out


def _code_plane(plane: torch.Tensor, table: torch.Tensor, reciprocals) -> torch.Tensor:
    """8-bit samples (B, H, W), H and W multiples of 8 -> forward DCT, quantisation by ``8 * table`` (``reciprocals``
    of it), dequantisation, inverse DCT -> 8-bit samples."""
    if plane.device.type == 'mps':   # no float64
        return _code_plane_int64(plane, table, reciprocals)
    return _code_plane_float64(plane, table, reciprocals)


def _shifted_sum(plane: torch.Tensor, dim: int, weight: float, offset: float, step: int) -> torch.Tensor:
    """``weight * plane + offset`` plus the neighbour ``step`` (-1 or +1) along ``dim``, the edge sample standing in
    for the missing neighbour at the end (libjpeg's repeated edge rows and columns)."""
    total = plane * weight + offset
    size = plane.shape[dim]
    if step < 0:
        total.narrow(dim, 1, size - 1).add_(plane.narrow(dim, 0, size - 1))
        total.narrow(dim, 0, 1).add_(plane.narrow(dim, 0, 1))
    else:
        total.narrow(dim, 0, size - 1).add_(plane.narrow(dim, 1, size - 1))
        total.narrow(dim, size - 1, 1).add_(plane.narrow(dim, size - 1, 1))
    return total


def _fancy_upsample(plane: torch.Tensor) -> torch.Tensor:
    """libjpeg-turbo's ``h2v2_fancy_upsample`` of (B, h, w) float32 samples -> (B, 2h, 2w), edge rows and columns
    repeated: rows ``3 * near + far``, then columns ``(3 * near + far + 8 or 7) >> 4``."""
    batch, height, width = plane.shape
    out = torch.empty((batch, height, 2, width, 2), dtype=plane.dtype, device=plane.device)
    for row, row_step in ((0, -1), (1, 1)):         # output rows 2r (with the row above), 2r + 1 (below)
        sums = _shifted_sum(plane, 1, 3., 0., row_step)
        for col, col_step, bias in ((0, -1, 8.), (1, 1, 7.)):
            out[:, :, row, :, col] = _shifted_sum(sums, 2, 3., bias, col_step).mul_(1 / 16).floor_()
    return out.view(batch, 2 * height, 2 * width)


def _replicate(plane: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, h, w) -> (B, height, width): cropped, or extended by repeating the last row and column (libjpeg's
    ``expand_right_edge`` / ``expand_bottom_edge``)."""
    if plane.shape[1:] == (height, width):
        return plane
    rows = torch.arange(height, device=plane.device).clamp(max=plane.shape[1] - 1)
    cols = torch.arange(width, device=plane.device).clamp(max=plane.shape[2] - 1)
    return plane.index_select(1, rows).index_select(2, cols)


def _ceil(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _mix(channels, weights, offset: float) -> torch.Tensor:
    """``floor((sum_k weights[k] * channels[k] + offset) / 2^16)``: libjpeg's 16-bit fixed-point colour conversion,
    in float32, exact (every partial sum is an integer below 2^24 in magnitude)."""
    total = channels[0] * float(weights[0]) + offset
    for channel, weight in zip(channels[1:], weights[1:]):
        total.add_(channel, alpha=float(weight))
    return total.mul_(2.0 ** -16).floor_()


def jpeg_round_trip(x: torch.Tensor, quality: int) -> torch.Tensor:
    """(B, 3, H, W) pixels in [0, 1] (rounded to 8 bits first, as Pillow's input) saved as a baseline JPEG of
    ``quality`` by Pillow and read back: returns the decoded pixels in [0, 1]. Any size: partial MCUs are filled by
    repeating the last row / column as libjpeg does (luma to whole blocks; chroma planes to whole 16-pixel MCUs
    before 2 x 2 averaging, then to whole blocks); the decoder upsamples the ``ceil(H / 2) x ceil(W / 2)`` chroma
    samples (fancy upsampling if wider than 2, else plain 2 x 2 repetition, as libjpeg chooses). The samples are
    integers held in float32 (exact: below 2^24) outside the DCTs."""
    batch, _, height, width = x.shape
    rgb = x.detach().float().mul(255).add_(0.5).floor_().clamp_(0, 255)
    r, g, b = rgb.unbind(1)
    half = 1 << 15
    y = _mix((r, g, b), (_fix16(0.299), _fix16(0.587), _fix16(0.114)), half)
    chroma_offset = (128 << 16) + half - 1
    cb = _mix((r, g, b), (-_fix16(0.16874), -_fix16(0.33126), _fix16(0.5)), chroma_offset)
    cr = _mix((r, g, b), (_fix16(0.5), -_fix16(0.41869), -_fix16(0.08131)), chroma_offset)
    chroma_height, chroma_width = -(-height // 2), -(-width // 2)
    padded_height, padded_width = 2 * chroma_height, _ceil(width, 16)
    bias = torch.tensor([1., 2.], device=x.device).repeat(padded_width // 4)
    luma_table, chroma_table = _quantization_tables(quality)
    luma_reciprocals, chroma_reciprocals = _reciprocals_of(quality)
    y = _code_plane(_replicate(y, _ceil(height, 8), _ceil(width, 8)), luma_table, luma_reciprocals)[:, :height, :width]
    planes = []
    for plane in (cb, cr):
        # h2v2_downsample: (sum of 2 x 2 samples + bias 1, 2, 1, 2, ...) >> 2
        pairs = _replicate(plane, padded_height, padded_width).view(batch, chroma_height, 2, padded_width)
        rows = pairs[:, :, 0] + pairs[:, :, 1]
        quads = rows.view(batch, chroma_height, padded_width // 2, 2)
        plane = (quads[..., 0] + quads[..., 1]).add_(bias).mul_(0.25).floor_()
        plane = _code_plane(_replicate(plane, _ceil(chroma_height, 8), padded_width // 2), chroma_table,
                            chroma_reciprocals)
        plane = plane[:, :chroma_height, :chroma_width]
        if chroma_width > 2:
            plane = _fancy_upsample(plane)
        else:
            plane = plane.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
        planes.append(plane[:, :height, :width] - 128)
    cb, cr = planes
    out = torch.empty((batch, 3, height, width), dtype=torch.float32, device=x.device)
    out[:, 0] = _mix((cr,), (_fix16(1.402),), half)
    out[:, 1] = _mix((cb, cr), (-_fix16(0.34414), -_fix16(0.71414)), half)
    out[:, 2] = _mix((cb,), (_fix16(1.772),), half)
    return out.add_(y[:, None]).clamp_(0, 255).to(x.dtype).div_(255)
