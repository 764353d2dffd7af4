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
"""
import torch

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
    quality = min(max(quality, 1), 100)
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    tables = []
    for base in (_LUMA, _CHROMA):
        table = (torch.tensor(base, dtype=torch.int64) * scale + 50) // 100
        tables.append(table.clamp(1, 255).view(8, 8))
    return tables


def _descale(value: torch.Tensor, bits: int) -> torch.Tensor:
    return (value + (1 << (bits - 1))) >> bits


def _fdct_1d(d: torch.Tensor, first: bool) -> torch.Tensor:
    """One pass of ``jpeg_fdct_islow`` along the last axis (8 samples)."""
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


def _idct_1d(w: torch.Tensor, bits: int) -> torch.Tensor:
    """One pass of ``jpeg_idct_islow`` along the last axis, descaled by ``bits`` (11, then 18)."""
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


def _code_plane(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """8-bit samples -> forward DCT, quantisation, dequantisation, inverse DCT -> 8-bit samples."""
    blocks = _blocks(plane) - 128
    coefficients = _fdct_1d(_fdct_1d(blocks, True).transpose(-1, -2), False).transpose(-1, -2)
    recip, corr, shift = (t.to(plane.device) for t in _reciprocals(table * 8))
    magnitude = ((coefficients.abs() + corr) * recip) >> shift
    quantised = torch.where(coefficients < 0, -magnitude, magnitude)
    dequantised = quantised * table.to(plane.device)
    columns = _idct_1d(dequantised.transpose(-1, -2), 11).transpose(-1, -2)   # pass 1 over columns
    values = _idct_1d(columns, 18)                                            # pass 2 over rows
    masked = values & 1023                                                    # the range-limit table
    samples = torch.where(masked < 128, masked + 128, torch.where(
        masked < 512, torch.full_like(masked, 255), torch.where(masked < 896, torch.zeros_like(masked), masked - 896)))
    return _unblocks(samples)


def _fancy_upsample(plane: torch.Tensor) -> torch.Tensor:
    """libjpeg-turbo's ``h2v2_fancy_upsample`` of (B, h, w) -> (B, 2h, 2w), edge rows and columns repeated."""
    above = torch.cat([plane[:, :1], plane[:, :-1]], dim=1)
    below = torch.cat([plane[:, 1:], plane[:, -1:]], dim=1)
    sums = torch.stack([plane * 3 + above, plane * 3 + below], dim=2).flatten(1, 2)   # rows 2r, 2r + 1
    left = torch.cat([sums[:, :, :1], sums[:, :, :-1]], dim=2)
    right = torch.cat([sums[:, :, 1:], sums[:, :, -1:]], dim=2)
    return torch.stack([(sums * 3 + left + 8) >> 4, (sums * 3 + right + 7) >> 4], dim=3).flatten(2, 3)


def _replicate(plane: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, h, w) -> (B, height, width): cropped, or extended by repeating the last row and column (libjpeg's
    ``expand_right_edge`` / ``expand_bottom_edge``)."""
    rows = torch.arange(height, device=plane.device).clamp(max=plane.shape[1] - 1)
    cols = torch.arange(width, device=plane.device).clamp(max=plane.shape[2] - 1)
    return plane.index_select(1, rows).index_select(2, cols)


def _ceil(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def jpeg_round_trip(x: torch.Tensor, quality: int) -> torch.Tensor:
    """(B, 3, H, W) pixels in [0, 1] (rounded to 8 bits first, as Pillow's input) saved as a baseline JPEG of
    ``quality`` by Pillow and read back: returns the decoded pixels in [0, 1]. Any size: partial MCUs are filled by
    repeating the last row / column as libjpeg does (luma to whole blocks; chroma planes to whole 16-pixel MCUs
    before 2 x 2 averaging, then to whole blocks); the decoder upsamples the ``ceil(H / 2) x ceil(W / 2)`` chroma
    samples (fancy upsampling if wider than 2, else plain 2 x 2 repetition, as libjpeg chooses)."""
    batch, _, height, width = x.shape
    rgb = torch.floor(x.detach() * 255 + 0.5).clamp(0, 255).long()
    r, g, b = rgb.unbind(1)
    half = 1 << 15
    y = (_fix16(0.299) * r + _fix16(0.587) * g + _fix16(0.114) * b + half) >> 16
    chroma_offset = (128 << 16) + half - 1
    cb = (-_fix16(0.16874) * r - _fix16(0.33126) * g + _fix16(0.5) * b + chroma_offset) >> 16
    cr = (_fix16(0.5) * r - _fix16(0.41869) * g - _fix16(0.08131) * b + chroma_offset) >> 16
    chroma_height, chroma_width = -(-height // 2), -(-width // 2)
    padded_height, padded_width = 2 * chroma_height, _ceil(width, 16)
    bias = torch.tensor([1, 2], device=x.device).repeat(padded_width // 4).view(1, 1, -1)
    luma_table, chroma_table = quantization_tables(quality)
    y = _code_plane(_replicate(y, _ceil(height, 8), _ceil(width, 8)), luma_table)[:, :height, :width]
    planes = []
    for plane in (cb, cr):
        plane = _replicate(plane, padded_height, padded_width)
        plane = (plane.view(batch, chroma_height, 2, padded_width // 2, 2).sum(dim=(2, 4)) + bias) >> 2
        plane = _code_plane(_replicate(plane, _ceil(chroma_height, 8), padded_width // 2), chroma_table)
        plane = plane[:, :chroma_height, :chroma_width]
        if chroma_width > 2:
            plane = _fancy_upsample(plane)
        else:
            plane = plane.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
        planes.append(plane[:, :height, :width] - 128)
    cb, cr = planes
    red = y + ((_fix16(1.402) * cr + half) >> 16)
    green = y + ((-_fix16(0.34414) * cb + half - _fix16(0.71414) * cr) >> 16)
    blue = y + ((_fix16(1.772) * cb + half) >> 16)
    return torch.stack([red, green, blue], dim=1).clamp(0, 255).to(x.dtype) / 255
