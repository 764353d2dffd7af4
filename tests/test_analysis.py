"""The analyses: fixed patch masks, patch-restricted perturbations, the attention-change statistic, streaming,
figures and the `timm-rspc analyze` command, on tiny ViTs and generated images."""
import json
import math

import pytest
import timm
import torch
import torch.nn.functional as F

from timm_rspc.analysis import (
    CORRUPTIONS, AttentionStability, FixedPatchMasks, NoiseOcclusion, PatchCorruption, PatchPGD, PixelModel,
    WorstCasePatches, attention_change_sums, evaluate_attention_stability, evaluate_sensitivity, num_occluded,
)
from timm_rspc.analysis.perturbations import pixel_keep_mask

GRID, PATCH = (4, 4), 8


def tiny_vit(seed: int) -> PixelModel:
    torch.manual_seed(seed)
    model = timm.create_model('vit_tiny_patch16_224', img_size=32, patch_size=PATCH, embed_dim=32, depth=2,
                              num_heads=2, num_classes=4)
    return PixelModel(model.eval())


@pytest.fixture(scope='module')
def models():
    return {'baseline': tiny_vit(0), 'other': tiny_vit(1)}


@pytest.fixture(scope='module')
def data():
    g = torch.Generator().manual_seed(2024)  # not 0: the perturbations' noise generators are seeded 0 below
    return torch.rand(10, 3, 32, 32, generator=g), torch.randint(0, 4, (10,), generator=g)


def batches(data, size):
    pixels, targets = data
    return [(pixels[i:i + size], targets[i:i + size]) for i in range(0, pixels.shape[0], size)]


def outside(keep):
    return pixel_keep_mask(keep, torch.zeros(keep.shape[0], 3, 32, 32)).expand(-1, 3, -1, -1) > 0


def test_fixed_masks_have_the_ratio_and_do_not_depend_on_batching():
    masks = FixedPatchMasks((14, 14), 0.1, seed=3)
    whole = masks.rows(0, 2500)
    assert num_occluded((14, 14), 0.1) == 20  # RSPC's count: floor(0.1 * 195) + 1
    assert whole.shape == (2500, 196) and ((1 - whole).sum(1) == 20).all()
    pieces = torch.cat([masks.rows(i, min(i + 37, 2500)) for i in range(0, 2500, 37)])
    assert torch.equal(whole, pieces)
    assert torch.equal(FixedPatchMasks((14, 14), 0.1, seed=3).rows(1000, 1030), whole[1000:1030])
    assert not torch.equal(FixedPatchMasks((14, 14), 0.1, seed=4).rows(0, 30), whole[:30])
    assert torch.unique(whole, dim=0).shape[0] > 2400  # a different random mask per image


def test_random_masks_occlude_as_many_patches_as_rspc():
    from timm_rspc.method import top_rho_straight_through
    for grid in ((4, 4), (8, 8), (14, 14)):
        n = grid[0] * grid[1]
        keep = FixedPatchMasks(grid, 0.1, seed=0).rows(0, 5)
        rspc_keep = top_rho_straight_through(torch.randn(5, n), 0.1)  # C's binarisation, distinct scores
        assert ((1 - keep).sum(1) == num_occluded(grid, 0.1)).all()
        assert ((1 - rspc_keep).sum(1) == num_occluded(grid, 0.1)).all()


class RecordingPerturbation:
    """Records the masks it is given and perturbs nothing."""

    def __init__(self, name, log):
        self.name, self.log = name, log

    def bind(self, model):
        def perturb(pixels, targets, keep, generator):
            self.log.append(keep.clone())
            return pixels
        return perturb


def test_every_perturbation_and_model_gets_the_same_mask_per_image(models, data):
    log_a, log_b = [], []
    perturbations = [RecordingPerturbation('a', log_a), RecordingPerturbation('b', log_b)]
    result = evaluate_sensitivity(models, batches(data, 4), perturbations, ratio=0.1, seed=7)
    # 3 batches x 2 models per perturbation; per model the batches tile the data set's fixed masks.
    expected = FixedPatchMasks(GRID, 0.1, seed=7).rows(0, 10)
    for log in (log_a, log_b):
        per_model = [torch.cat(log[m::2]) for m in range(2)]
        assert all(torch.equal(masks, expected) for masks in per_model)
    assert result['models']['baseline']['perturbed']['a']['accuracy_drop'] == 0
    assert result['patches_per_image'] == 2 and result['num_images'] == 10


def test_pgd_stays_in_the_patches_budget_and_range_and_raises_the_loss(models, data):
    model = models['baseline']
    pixels, targets = data
    keep = FixedPatchMasks(GRID, 0.1, seed=0).rows(0, 10)
    pgd = PatchPGD(epsilon=8 / 255, step_size=2 / 255, steps=5)
    attacked = pgd.bind(model)(pixels, targets, keep, torch.Generator().manual_seed(0))
    delta = attacked - pixels
    assert torch.equal(attacked[outside(keep)], pixels[outside(keep)])
    assert delta.abs().max() <= 8 / 255 + 1e-6 and delta[~outside(keep)].abs().max() > 7 / 255
    assert attacked.min() >= 0 and attacked.max() <= 1
    with torch.no_grad():
        clean_loss = F.cross_entropy(model(pixels), targets)
        attacked_loss = F.cross_entropy(model(attacked), targets)
    assert attacked_loss > clean_loss + 1e-3
    with pytest.raises(ValueError, match='epsilon > 0'):
        PatchPGD(epsilon=0)


@pytest.mark.parametrize('name', sorted(CORRUPTIONS) + ['noise_occlusion'])
def test_each_corruption_changes_only_the_masked_patches(models, data, name):
    pixels, targets = data
    pixels = pixels * 0.8 + 0.1  # room above and below, so brightness / noise always change a pixel
    keep = FixedPatchMasks(GRID, 0.1, seed=0).rows(0, 10)
    perturbation = NoiseOcclusion() if name == 'noise_occlusion' else PatchCorruption(name, severity=5)
    out = perturbation.bind(models['baseline'])(pixels, targets, keep, torch.Generator().manual_seed(0))
    assert torch.equal(out[outside(keep)], pixels[outside(keep)])
    inside = ~outside(keep)
    assert (out[inside] != pixels[inside]).float().mean() > 0.25  # impulse noise: 27% of the values
    assert out.min() >= 0 and out.max() <= 1


def test_worst_case_occludes_as_many_patches_as_the_random_masks(models, data):
    pixels, targets = data
    worst = WorstCasePatches(pixels, ratio=0.1, steps=2, batch_size=4)
    perturb = worst.bind(models['baseline'])
    keep = FixedPatchMasks(GRID, 0.1, seed=0).rows(0, 10)
    out = perturb(pixels, targets, keep, torch.Generator().manual_seed(0))
    changed = (out != pixels).flatten(2).any(1).reshape(10, 4, 8, 4, 8).any(2).any(-1).flatten(1)
    assert (changed.sum(1) == num_occluded(GRID, 0.1)).all()
    assert set(worst.fit_history) == {'align_loss_start', 'align_loss_end', 'best_step', 'evaluations',
                                      'chosen_fraction'}
    assert worst.fit_history['align_loss_end'] >= worst.fit_history['align_loss_start']


def test_attention_change_is_zero_for_identical_maps_and_positive_otherwise():
    attn = torch.randn(2, 3, 5, 5).softmax(-1)
    keys = torch.zeros(2, 5, dtype=torch.bool)
    keys[:, 2] = True
    sums = attention_change_sums(attn, attn.clone(), keys, keys)
    assert sums['js'].item() == 0 and sums['js_corrupted_rows'].item() == 0
    assert sums['cosine'].item() / sums['rows'].item() == pytest.approx(1, abs=1e-6)
    other = torch.randn(2, 3, 5, 5).softmax(-1)
    assert attention_change_sums(attn, other, keys, keys)['js'] > 0


def test_attention_change_on_a_two_token_example_by_hand():
    clean = torch.tensor([[[[0.5, 0.5], [0.2, 0.8]]]])         # (1 image, 1 head, 2 queries, 2 keys)
    corrupted = torch.tensor([[[[0.9, 0.1], [0.2, 0.8]]]])     # only the first query's row changes
    token_1 = torch.tensor([[False, True]])                    # token 1 is the corrupted patch
    sums = attention_change_sums(clean, corrupted, token_1, token_1)
    kl_p_m = 0.5 * math.log(0.5 / 0.7) + 0.5 * math.log(0.5 / 0.3)
    kl_q_m = 0.9 * math.log(0.9 / 0.7) + 0.1 * math.log(0.1 / 0.3)
    js_row0 = 0.5 * (kl_p_m + kl_q_m)                          # = 0.10175 nats
    assert js_row0 == pytest.approx(0.101749, abs=1e-6)
    assert sums['rows'].item() == 2 and sums['corrupted_rows'].item() == 1
    assert sums['js'].item() == pytest.approx(js_row0, rel=1e-5)
    assert sums['js_corrupted_rows'].item() == 0               # row 1 (the corrupted query) is unchanged
    cos_row0 = (0.5 * 0.9 + 0.5 * 0.1) / math.sqrt((0.25 + 0.25) * (0.81 + 0.01))
    assert sums['cosine'].item() == pytest.approx(cos_row0 + 1, rel=1e-6)
    assert sums['attention_to_corrupted_clean'].item() == pytest.approx(0.5 + 0.8, rel=1e-6)
    assert sums['attention_to_corrupted'].item() == pytest.approx(0.1 + 0.8, rel=1e-6)
    stats = AttentionStability()
    stats.update('layer', sums)
    assert stats.means()['layer']['js'] == pytest.approx(js_row0 / 2, rel=1e-5)


def test_attention_stability_streamed_equals_one_shot(models, data):
    from timm_rspc.analysis import attention_extractor, occlude_with_noise
    pixels = data[0]
    keep = FixedPatchMasks(GRID, 0.1, seed=5).rows(0, 10)
    corrupted = occlude_with_noise(pixels, keep, torch.Generator().manual_seed(1))
    corrupted_tokens = torch.cat([torch.zeros(10, 1, dtype=torch.bool), keep == 0], dim=1)  # class token first
    with attention_extractor(models['baseline']) as extract, torch.no_grad():
        clean_maps, corrupted_maps = extract(pixels), extract(corrupted)
    assert list(clean_maps) == ['blocks.0.attn.softmax', 'blocks.1.attn.softmax']
    streamed = AttentionStability()
    for start in range(0, 10, 3):
        rows = slice(start, start + 3)
        for layer in clean_maps:
            streamed.update(layer, attention_change_sums(clean_maps[layer][rows], corrupted_maps[layer][rows],
                                                         corrupted_tokens[rows], corrupted_tokens[rows]))
    one_shot = AttentionStability()
    for layer in clean_maps:
        one_shot.update(layer, attention_change_sums(clean_maps[layer], corrupted_maps[layer], corrupted_tokens,
                                                     corrupted_tokens))
    for layer, values in one_shot.means().items():
        assert values['rows'] == 10 * 2 * 17 and values['corrupted_rows'] == 10 * 2 * 2
        assert values['js'] > 0 and values['js_corrupted_rows'] > values['js']  # corrupted tokens change most
        for key, value in streamed.means()[layer].items():
            assert value == pytest.approx(values[key], rel=1e-12)
    # The full analysis builds the same token masks (class token never corrupted) and streams the same way.
    result = evaluate_attention_stability(models, batches(data, 3), ratio=0.1, seed=5)
    assert result['num_images'] == 10
    assert [layer['corrupted_rows'] for layer in result['models']['other']['layers']] == [40, 40]
    # The fused-attention switch is restored after extraction.
    assert all(m.fused_attn == timm.layers.use_fused_attn() for m in models['baseline'].modules()
               if hasattr(m, 'fused_attn'))


def test_token_masks_handle_prefix_tokens_and_pooled_grids():
    from timm_rspc.analysis.attention import token_corruption_mask
    corrupted = torch.zeros(1, 16, dtype=torch.bool)
    corrupted[0, 5] = True                                       # patch (1, 1) of a 4x4 grid
    tokens, prefix = token_corruption_mask(corrupted, (4, 4), 17, [1, 0])
    assert prefix == 1 and tokens.nonzero().tolist() == [[0, 6]]  # class token first, never corrupted
    tokens, prefix = token_corruption_mask(corrupted, (4, 4), 16, [1, 0])
    assert prefix == 0 and tokens.nonzero().tolist() == [[0, 5]]
    tokens, prefix = token_corruption_mask(corrupted, (4, 4), 4, [0])  # a stage pooled 2x2: token 0 covers (1, 1)
    assert prefix == 0 and tokens.tolist() == [[True, False, False, False]]
    assert token_corruption_mask(corrupted, (4, 4), 7, [1, 0]) is None  # e.g. channel attention: not tokens


def test_analyze_rejects_bad_model_options(capsys):
    from timm_rspc.cli import main
    for argv, message in ((['--model', 'a', '--model', 'b', '--model', 'c', '--pretrained'], 'at most two models'),
                          (['--model', 'a'], 'give the weights'),
                          (['--model', 'a', '--model', 'b', '--checkpoint', 'x'], 'one per model')):
        with pytest.raises(SystemExit) as error:
            main(['analyze', 'sensitivity', *argv, '--data-dir', '.'])
        assert error.value.code == 2 and message in capsys.readouterr().err


def test_plots_are_written(tmp_path, models, data):
    pytest.importorskip('matplotlib')
    from timm_rspc.analysis import (
        attention_grid_figure, attention_stability_figure, query_attention_maps, save_figure, sensitivity_figure)
    sensitivity = evaluate_sensitivity(models, batches(data, 5), [NoiseOcclusion(), PatchCorruption('contrast')])
    attention = evaluate_attention_stability(models, batches(data, 5))
    keep = FixedPatchMasks(GRID, 0.1, seed=0).rows(0, 2)
    maps = query_attention_maps(models, data[0][:2], keep, query_patch=5)
    assert maps['models']['other']['clean'].shape == (2, 4, 4)
    assert torch.allclose(maps['models']['other']['clean'].sum((1, 2)), torch.ones(2) - 0, atol=0.5)
    for fig, name in ((sensitivity_figure(sensitivity), 's.png'), (attention_stability_figure(attention), 'a.png'),
                      (attention_grid_figure(maps), 'g.png')):
        path = tmp_path / name
        save_figure(fig, str(path))
        assert path.read_bytes()[:4] == b'\x89PNG' and path.stat().st_size > 5000


def test_missing_matplotlib_names_the_extra(monkeypatch):
    import sys
    from timm_rspc.analysis.plots import require_matplotlib
    monkeypatch.setitem(sys.modules, 'matplotlib', None)
    with pytest.raises(ImportError, match=r"timm-rspc\[plot\]"):
        require_matplotlib()


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
    from PIL import Image
    root = tmp_path_factory.mktemp('images')
    g = torch.Generator().manual_seed(0)
    for c in range(4):
        folder = root / 'validation' / f'class{c}'
        folder.mkdir(parents=True)
        for i in range(3):
            array = (torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(array).save(folder / f'{i}.png')
    return root


def test_analyze_command_writes_json_csv_and_plots_and_never_overwrites(tmp_path, image_folder, capsys):
    from timm_rspc.cli import main
    checkpoints = []
    for seed in (0, 1):
        path = tmp_path / f'model{seed}.pth'
        torch.save(tiny_vit(seed).model.state_dict(), path)
        checkpoints += ['--checkpoint', str(path)]
    common = ['--model', 'vit_tiny_patch16_224', '--model', 'vit_tiny_patch16_224', *checkpoints,
              '--label', 'baseline', '--label', 'RSPC', '--num-classes', '4', '--model-kwargs', 'img_size=32',
              f'patch_size={PATCH}', 'embed_dim=32', 'depth=2', 'num_heads=2', '--data-dir', str(image_folder),
              '--batch-size', '5', '--workers', '0']
    out = tmp_path / 'sensitivity'
    assert main(['analyze', 'sensitivity', *common, '--perturbations', 'noise_occlusion', 'pgd', 'fog',
                 '--pgd-steps', '2', '--pgd-epsilon', '4/255', '--output', str(out)]) == 0
    printed = capsys.readouterr().out
    assert 'RSPC ' in printed and 'fog' in printed
    result = json.loads((out / 'analysis.json').read_text())
    assert result['num_images'] == 12 and list(result['models']) == ['baseline', 'RSPC']
    assert result['perturbations'][1] == {'name': 'pgd', 'epsilon': 4 / 255, 'step_size': 2 / 255, 'steps': 2,
                                          'random_start': True}
    assert (out / 'sensitivity.csv').read_text().count('\n') == 1 + 2 * 4
    out_a = tmp_path / 'attention'
    assert main(['analyze', 'attention', *common, '--grid-images', '2', '--query-patch', '1,2',
                 '--output', str(out_a)]) == 0
    result = json.loads((out_a / 'analysis.json').read_text())
    assert len(result['models']['RSPC']['layers']) == 2
    pytest.importorskip('matplotlib')
    for png in (out / 'sensitivity.png', out_a / 'attention.png', out_a / 'attention_grid.png'):
        assert png.read_bytes()[:4] == b'\x89PNG'
    before = (out / 'analysis.json').read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        main(['analyze', 'sensitivity', *common, '--output', str(out)])
    assert refused.value.code == 2
    assert 'already exists and is not empty' in capsys.readouterr().err
    assert (out / 'analysis.json').read_bytes() == before


def _one_error_line(capsys, argv):
    from timm_rspc.cli import main
    with pytest.raises(SystemExit) as error:
        main(['analyze', 'sensitivity', *argv])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert error.value.code == 2 and len(err) == 1, err
    return err[0]


def test_analyze_mistakes_are_one_line(tmp_path, image_folder, capsys):
    (tmp_path / 'empty').mkdir()
    nope = str(tmp_path / 'nope.pth')
    line = _one_error_line(capsys, ['--model', 'vit_tiny_patch16_224', '--pretrained', '--data-dir',
                                    str(tmp_path / 'empty'), '--output', str(tmp_path / 'o')])
    assert '--data-dir: no images' in line  # was a traceback (timm's RuntimeError: Found 0 images ...)
    line = _one_error_line(capsys, ['--model', 'vit_tiny_patch16_224', '--checkpoint', nope, '--data-dir',
                                    str(image_folder)])
    assert f"--checkpoint file '{nope}' does not exist" in line
    line = _one_error_line(capsys, ['--model', 'vit_tiny_patch16_22', '--pretrained', '--data-dir', str(image_folder)])
    assert 'Did you mean: vit_tiny_patch16_224' in line and 'timm-rspc models' not in line
    assert not (tmp_path / 'o').exists()


def test_analyze_builds_checkpoints_the_way_they_were_trained(tmp_path, image_folder, capsys):
    # timm-rspc train / train.py checkpoints: the stored args build the model (no --model-kwargs, no --num-classes);
    # --model A B and --model A --model B alike; -b / -j as in timm's scripts; --use-ema picks the EMA weights.
    import argparse
    from timm_rspc.cli import main
    kwargs = dict(img_size=32, patch_size=PATCH, embed_dim=32, depth=2, num_heads=2)
    for seed in (0, 1):
        state = tiny_vit(seed).model.state_dict()
        torch.save({'state_dict': {k: torch.zeros_like(v) for k, v in state.items()}, 'state_dict_ema': state,
                    'args': argparse.Namespace(model='vit_tiny_patch16_224', model_kwargs=kwargs, num_classes=4,
                                               img_size=None, input_size=None)}, tmp_path / f'm{seed}.pth.tar')
    out = tmp_path / 'out'
    assert main(['analyze', 'sensitivity', '--model', 'vit_tiny_patch16_224', 'vit_tiny_patch16_224', '--checkpoint',
                 str(tmp_path / 'm0.pth.tar'), '--checkpoint', str(tmp_path / 'm1.pth.tar'), '--use-ema',
                 '--label', 'a', 'b', '--data-dir', str(image_folder), '-b', '6', '-j', '0',
                 '--perturbations', 'noise_occlusion', '--output', str(out)]) == 0
    result = json.loads((out / 'analysis.json').read_text())
    assert list(result['models']) == ['a', 'b'] and result['num_images'] == 12
    assert result['arguments']['batch_size'] == 6 and result['arguments']['input_size_evaluated'] == [3, 32, 32]
    build = result['arguments']['model_builds']['a']
    assert build['num_classes'] == 4 and build['model_kwargs'] == kwargs and build['weights']['weights'] == 'ema'
    assert build['build_args_from'] == str(tmp_path / 'm0.pth.tar')
    # the EMA weights are the trained ones: the two models differ (all-zero non-EMA weights would not)
    assert result['models']['a'] != result['models']['b']
    # timm train.py --img-size 32 --model-kwargs dynamic_img_size=True: built at 224, analysed at 32 (was 224)
    torch.manual_seed(0)
    dynamic = dict(patch_size=PATCH, embed_dim=32, depth=2, num_heads=2, dynamic_img_size=True)
    model = timm.create_model('vit_tiny_patch16_224', num_classes=4, **dynamic)
    torch.save({'state_dict': model.state_dict(), 'args': argparse.Namespace(
        model='vit_tiny_patch16_224', model_kwargs=dynamic, num_classes=4, img_size=32)}, tmp_path / 'dyn.pth.tar')
    common = ['--model', 'vit_tiny_patch16_224', '--checkpoint', str(tmp_path / 'dyn.pth.tar'), '--data-dir',
              str(image_folder), '-j', '0', '--perturbations', 'noise_occlusion']
    assert main(['analyze', 'sensitivity', *common, '--num-images', '2', '--output', str(tmp_path / 'dyn')]) == 0
    result = json.loads((tmp_path / 'dyn' / 'analysis.json').read_text())
    assert result['arguments']['input_size_evaluated'] == [3, 32, 32]
    capsys.readouterr()
    # a size the model cannot take: one line
    line = _one_error_line(capsys, [*common, '--model-kwargs', 'dynamic_img_size=False', '--img-size', '48',
                                    '--output', str(tmp_path / 'x')])
    assert 'does not take 3 x 48 x 48 input' in line and not (tmp_path / 'x').exists()
