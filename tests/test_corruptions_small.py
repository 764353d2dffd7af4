"""The 32 and 64 px constants (``constants='cifar'``, ``'tinyimagenet'``) against the reference's own scripts.

The reference's small-image variants exist only as scripts of hendrycks/robustness (``ImageNet-C/create_c/
make_cifar_c.py``, 32 px, CIFAR-10-C / CIFAR-100-C; ``make_tinyimagenet_c.py``, 64 px, Tiny-ImageNet-C), not on
PyPI, so their outputs were recorded once into ``tests/data/small_references.npz`` by

    OMP_NUM_THREADS=1 python benchmarks/record_small_references.py --robustness PATH/TO/robustness

(a checkout of https://github.com/hendrycks/robustness, here at 8190fe3; numpy 2.4, scipy 1.17, scikit-image 0.26,
OpenCV 4.14 with IPP, Pillow 13, ImageMagick 6.9.11-60 Q16: the file's ``versions``). The script ``exec``'s the
scripts' own corruption functions on one photograph per size (scikit-image's astronaut at 32 px, chelsea at 64 px,
stored in the file), all 19 corruptions at severities 1-5, each with its own seed (stored); the random corruptions'
``np.random`` calls were handed the draws our functions make from that seed (see the script). So here every
corruption, random ones included, is compared pixel by pixel: within 1 grey level of the recording on 8-bit output
(``np.uint8``, with 1e-3 levels of slack for float32), and within 0.25 levels on average. The 1-level differences
are float32 (ours) against float64 (the reference) where a value lies on a grey level's edge (mean differences of
0.0002 to 0.14 levels); shot_noise, impulse_noise, contrast, pixelate, jpeg_compression and motion_blur (and
spatter at 32 px) agree exactly on 8-bit output. frost needs the ImageNet-C photographs
(`timm_rspc.corruptions.reference_data`: the ``imagenet_c`` sdist, fetched once), the same files as the scripts'
own, and skips without them; its 0.2 / 0.3 shrinking by ``cv2.resize`` is checked against OpenCV itself below.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from timm_rspc.corruptions import (
    CONSTANTS, CORRUPTIONS, NATIVE_SIZES, SEVERITIES, SEVERITIES_BY_CONSTANTS, corrupt, opencv_resize_linear,
)

RECORDINGS = Path(__file__).parent / 'data' / 'small_references.npz'
SMALL = ('cifar', 'tinyimagenet')
SLACK = 1e-3   # grey levels: a float32 value that is a whole grey level may come out 1e-5 below it


@pytest.fixture(scope='module')
def recordings():
    with np.load(RECORDINGS) as data:
        return {key: data[key] for key in data.files}


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    return np.uint8(np.clip(pixels.permute(0, 2, 3, 1).double().numpy() * 255 + SLACK, 0, 255))


def test_the_recordings_cover_every_corruption_and_severity(recordings):
    versions = json.loads(str(recordings['versions']))
    assert versions['scripts'] == {'cifar': 'make_cifar_c.py', 'tinyimagenet': 'make_tinyimagenet_c.py'}
    for constants in SMALL:
        side = NATIVE_SIZES[constants]
        assert recordings[f'{constants}/clean'].shape == (side, side, 3)
        for name in CORRUPTIONS:
            assert recordings[f'{constants}/{name}'].shape == (5, side, side, 3)
            assert recordings[f'{constants}/{name}'].dtype == np.uint8
            assert len(set(recordings[f'{constants}/{name}/seeds'].tolist())) == 5


@pytest.mark.parametrize('name', list(CORRUPTIONS))
@pytest.mark.parametrize('constants', SMALL)
def test_small_constants_match_the_reference_scripts(recordings, constants, name):
    if name == 'frost':
        from timm_rspc.corruptions.reference_data import frost_images
        try:
            frost_images()
        except RuntimeError as error:
            pytest.skip(f'frost needs the ImageNet-C photographs: {str(error).splitlines()[0]}')
    clean = torch.from_numpy(recordings[f'{constants}/clean']).permute(2, 0, 1)[None].float() / 255
    rows = {}
    for severity, seed, expected in zip(range(1, 6), recordings[f'{constants}/{name}/seeds'].tolist(),
                                        recordings[f'{constants}/{name}']):
        ours = to_uint8(corrupt(name, clean, severity, torch.Generator().manual_seed(seed), constants=constants))[0]
        diff = np.abs(expected.astype(np.int16) - ours.astype(np.int16))
        rows[severity] = (int(diff.max()), round(float(diff.mean()), 4))
    assert all(worst <= 1 and mean <= 0.25 for worst, mean in rows.values()), (
        f'{name} ({constants}): (max, mean) grey levels per severity: {rows}')


def test_constants_tables():
    assert SEVERITIES_BY_CONSTANTS['imagenet'] is SEVERITIES and CONSTANTS == ('imagenet', 'cifar', 'tinyimagenet')
    for constants in CONSTANTS:
        table = SEVERITIES_BY_CONSTANTS[constants]
        assert set(table) == set(CORRUPTIONS) and all(len(levels) == 5 for levels in table.values())
    # spot checks against the scripts: CIFAR's shot noise photons, Tiny-ImageNet's saturate at severity 5, elastic's
    # IMSIZE-based constants with no displacement at severity 1
    assert SEVERITIES_BY_CONSTANTS['cifar']['shot_noise'] == (500, 250, 100, 75, 50)
    assert SEVERITIES_BY_CONSTANTS['tinyimagenet']['saturate'][4] == (30, .2)
    assert SEVERITIES_BY_CONSTANTS['cifar']['elastic_transform'][0] == (0, 0, 32 * .08)
    # numpy.arange(1, 1.06, .01) and (1, 1.11, .01) end at 1.06 and 1.11 (float rounding): 7 and 12 factors
    assert [len(f) for f in SEVERITIES_BY_CONSTANTS['cifar']['zoom_blur']] == [7, 12, 16, 21, 26]


def test_unknown_constants_are_refused_in_one_line():
    pixels = torch.rand(1, 3, 8, 8)
    for call in (lambda: corrupt('contrast', pixels, 1, constants='cifar10'),
                 lambda: CORRUPTIONS['glass_blur'](pixels, 1, constants='imagenet64')):
        with pytest.raises(ValueError) as error:
            call()
        message = str(error.value)
        assert '\n' not in message and 'imagenet, cifar, tinyimagenet' in message


def test_constants_change_the_corruption_and_default_to_imagenet():
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    default = corrupt('contrast', pixels, 1)
    assert torch.equal(default, corrupt('contrast', pixels, 1, constants='imagenet'))
    assert not torch.allclose(default, corrupt('contrast', pixels, 1, constants='cifar'))   # 0.4 vs 0.75


def test_opencv_resize_linear_is_opencvs_bit_for_bit():
    """cv2.resize(fx=fy=s, INTER_LINEAR) of 8-bit images, the reference's shrinking of the frost photographs (s = 0.2,
    0.3) and other scales, shrinking and enlarging, odd sizes, ramps and noise: identical (s = 0.5 is OpenCV's
    INTER_AREA and refused)."""
    cv2 = pytest.importorskip('cv2')
    rng = np.random.default_rng(0)
    for height, width in ((315, 560), (350, 527), (37, 53), (13, 7)):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        image[:height // 2] = np.linspace(0, 255, width).astype(np.uint8)[None, :, None]
        for scale in (0.2, 0.3, 0.45, 0.7, 1.3, 2.5):
            expected = cv2.resize(image, (0, 0), fx=scale, fy=scale)
            ours = opencv_resize_linear(torch.from_numpy(image).permute(2, 0, 1), scale).permute(1, 2, 0).numpy()
            assert ours.shape == expected.shape and np.array_equal(ours, expected), (height, width, scale)
    with pytest.raises(ValueError, match='INTER_AREA'):
        opencv_resize_linear(torch.zeros(1, 4, 4, dtype=torch.uint8), 0.5)


def test_frost_photographs_shrink_as_the_scripts_do():
    """The six photographs shrunk by 0.2 (32 px) and 0.3 (64 px) are cv2.resize's of the photographs (read as
    ``cv2.imread`` does: BGR; the resize works per channel), and 32 / 64 px frost crops them."""
    cv2 = pytest.importorskip('cv2')
    from timm_rspc.corruptions.reference_data import frost_images
    from timm_rspc.corruptions.resize import frost_images_scaled
    try:
        stack, sizes = frost_images()
    except RuntimeError as error:
        pytest.skip(f'frost needs the ImageNet-C photographs: {str(error).splitlines()[0]}')
    for scale in (0.2, 0.3):
        scaled, scaled_sizes = frost_images_scaled('cpu', scale)
        for index, ((height, width), (h, w)) in enumerate(zip(sizes.tolist(), scaled_sizes.tolist())):
            bgr = np.ascontiguousarray(stack[index, :, :height, :width].permute(1, 2, 0).numpy()[..., ::-1])
            expected = cv2.resize(bgr, (0, 0), fx=scale, fy=scale)[..., ::-1]
            assert np.array_equal(scaled[index, :, :h, :w].permute(1, 2, 0).numpy(), expected), (scale, index)
    with pytest.raises(ValueError, match='images up to 62 x 104 px, got 64 x 64'):   # the shrunk photographs are 63 x 105 px and up
        corrupt('frost', torch.rand(1, 3, 64, 64), 1, constants='cifar')


def test_the_recorder_made_these_recordings(recordings):
    """``benchmarks/record_small_references.py`` (the script that made the file) gives the recorded seeds and clean
    images, and refuses a folder that is no hendrycks/robustness checkout in one line."""
    pytest.importorskip('cv2')
    pytest.importorskip('skimage')
    import importlib.util
    path = Path(__file__).parent.parent / 'benchmarks' / 'record_small_references.py'
    spec = importlib.util.spec_from_file_location('record_small_references', path)
    recorder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recorder)
    for constants in SMALL:
        assert np.array_equal(recorder.photo(constants), recordings[f'{constants}/clean'])
        for name in CORRUPTIONS:
            assert recordings[f'{constants}/{name}/seeds'].tolist() == [
                recorder.seed_of(constants, name, severity) for severity in range(1, 6)]
    with pytest.raises(SystemExit):
        recorder.main(['--robustness', str(Path(__file__).parent)])
