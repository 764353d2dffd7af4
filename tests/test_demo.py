"""The demo end to end in --quick mode (real training of both models, real occlusion scores), and its pieces."""
import json
import os

import pytest
import torch

from timm_rspc.demo.patch_occlusion import PatchNoise, num_occluded, random_keep_masks
from timm_rspc.demo.shapes import CLASS_NAMES, render_class, write_image_folder


def test_quick_demo_writes_table_json_and_plot(tmp_path, capsys):
    from timm_rspc.cli import main
    out, data = tmp_path / 'demo', tmp_path / 'data'
    assert main(['demo', '--quick', '--output', str(out), '--data-dir', str(data)]) == 0
    printed = capsys.readouterr().out
    assert 'baseline |' in printed and 'RSPC     |' in printed and 'seeds: data 0, training 42' in printed
    report = json.loads((out / 'demo.json').read_text())
    assert [m['name'] for m in report['models']] == ['baseline', 'RSPC']
    for m in report['models']:
        for kind in ('clean', 'random', 'worst_case'):
            assert 0 <= m[kind]['accuracy'] <= 100 and 0 <= m[kind]['confidence'] <= 100
        assert m['drop']['random']['accuracy'] == pytest.approx(m['clean']['accuracy'] - m['random']['accuracy'])
    assert report['seeds'] == {'data': 0, 'training': 42, 'evaluation': 1234}
    assert (out / 'baseline' / 'last.pth.tar').exists() and (out / 'rspc' / 'last.pth.tar').exists()
    pytest.importorskip('matplotlib')
    assert (out / 'demo.png').read_bytes()[:4] == b'\x89PNG'
    # A second demo into the same folder is refused; nothing there is touched.
    before = (out / 'demo.json').read_bytes()
    assert main(['demo', '--quick', '--output', str(out), '--data-dir', str(data)]) == 2
    assert (out / 'demo.json').read_bytes() == before


def test_shapes_are_deterministic_and_distinct(tmp_path):
    a = render_class('triangle', 4, 32, torch.Generator().manual_seed(3))
    b = render_class('triangle', 4, 32, torch.Generator().manual_seed(3))
    assert a.dtype == torch.uint8 and a.shape == (4, 32, 32, 3) and torch.equal(a, b)
    root = tmp_path / 'data'
    write_image_folder(str(root), 2, 1, 16, seed=0)
    assert sorted(os.listdir(root / 'train')) == sorted(CLASS_NAMES)
    assert len(os.listdir(root / 'validation' / 'circle')) == 1
    assert write_image_folder(str(root), 2, 1, 16, seed=0) == (str(root), False)  # reused as is
    with pytest.raises(FileExistsError, match='different generated data set'):
        write_image_folder(str(root), 3, 1, 16, seed=0)


def test_random_masks_occlude_as_many_patches_as_rspc():
    from timm_rspc.method import top_rho_straight_through
    for grid in ((4, 4), (8, 8), (14, 14)):
        n = grid[0] * grid[1]
        keep = random_keep_masks(5, grid, 0.1, torch.Generator().manual_seed(0))
        rspc_keep = top_rho_straight_through(torch.randn(5, n), 0.1)  # C's binarisation, distinct scores
        assert keep.shape == (5, n)
        assert ((1 - keep).sum(1) == num_occluded(grid, 0.1)).all()
        assert ((1 - rspc_keep).sum(1) == num_occluded(grid, 0.1)).all()


def test_patch_noise_replaces_exactly_the_masked_patches():
    keep = random_keep_masks(5, (4, 4), 0.1, torch.Generator().manual_seed(0))
    images = torch.full((5, 3, 32, 32), 0.123)
    fill = PatchNoise((4, 4), 8, mean=(0.5,) * 3, std=(0.5,) * 3)
    occluded = fill(images, keep, torch.Generator().manual_seed(1))
    expected = keep.view(5, 1, 4, 1, 4, 1).expand(5, 3, 4, 8, 4, 8).reshape(5, 3, 32, 32) == 0
    assert torch.equal(occluded != images, expected)
    # Pixel noise U[0, 1) normalised with mean = std = 0.5 covers [-1, 1).
    assert occluded[expected].min() >= -1 and occluded[expected].max() < 1 and occluded[expected].std() > 0.5
