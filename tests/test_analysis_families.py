"""The analyses beyond plain ViTs: patch sensitivity with the training's patch rule on every family, and attention
stability that measures what maps to image patches (pooled, spatially reduced and finer token grids) and names what
does not (windowed attention), never silently and never with a wrong mapping."""
import pytest
import timm
import torch

import timm_rspc  # noqa: F401  (registers RVT / FAN)
from timm_rspc.analysis import NoiseOcclusion, PixelModel, evaluate_attention_stability, evaluate_sensitivity
from timm_rspc.analysis.attention import token_corruption_mask
from timm_rspc.analysis.perturbations import patch_grid
from timm_rspc.analysis.report import format_attention_table
from timm_rspc.method import RSPCTask

from test_rspc_families import FAMILY_MATRIX


def _pixel_model(name):
    kwargs, img_size, *_ = FAMILY_MATRIX[name]
    torch.manual_seed(0)
    return PixelModel(timm.create_model(name, num_classes=10, **kwargs).eval(), img_size=img_size), img_size


def _batches(img_size, count=2, size=2):
    gen = torch.Generator().manual_seed(0)
    return [(torch.rand(size, 3, img_size, img_size, generator=gen), torch.arange(size) % 10) for _ in range(count)]


@pytest.mark.parametrize('name', ['swin_tiny_patch4_window7_224', 'pvt_v2_b0', 'convnext_atto', 'resnet18',
                                  'vit_tiny_patch16_224'])
def test_sensitivity_uses_the_training_patch_grid(name):
    model, img_size = _pixel_model(name)
    task = RSPCTask(model.model, img_size=img_size, verbose=False)
    assert patch_grid(model) == (task.corruption_model.grid_size, task.corruption_model.patch_size)
    result = evaluate_sensitivity({'m': model}, _batches(img_size), [NoiseOcclusion()], ratio=0.25, seed=0)
    assert result['patches_per_image'] == 4  # a quarter of the 4x4 grid of 16 px patches at 64 px
    assert 0 <= result['models']['m']['perturbed']['noise_occlusion']['accuracy'] <= 100


def test_token_masks_map_finer_token_grids_to_their_patch():
    corrupted = torch.tensor([[True, False, False, False]])  # 2x2 patches, the top-left one corrupted
    mask, prefix = token_corruption_mask(corrupted, (2, 2), 16, [0])  # 4x4 tokens: each patch holds 2x2 tokens
    assert prefix == 0
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[:2, :2] = True
    assert torch.equal(mask[0], expected.flatten())
    pooled, _ = token_corruption_mask(corrupted, (2, 2), 1 + 1, [1])  # a class token and one pooled token
    assert pooled.tolist() == [[False, True]]


@pytest.mark.parametrize('shift', [(0, 0), (1, 1), (1, 0)])
def test_window_mapping_equals_the_blocks_own_roll_and_partition(shift):
    """The corrupted tokens per window, against timm's own cyclic shift and window_partition of a token mask."""
    from timm.models.swin_transformer import window_partition
    from timm_rspc.analysis.attention import _windowed_token_mask
    gen = torch.Generator().manual_seed(0)
    corrupted = torch.rand(3, 16, generator=gen) < 0.3  # 4x4 patches
    tokens = torch.nn.functional.interpolate(corrupted.float().reshape(3, 1, 4, 4), scale_factor=2)  # 8x8 tokens
    rolled = torch.roll(tokens.permute(0, 2, 3, 1), shifts=(-shift[0], -shift[1]), dims=(1, 2))
    expected = window_partition(rolled, (4, 4)).reshape(-1, 16) > 0  # (3 images x 4 windows, 16 tokens)
    mapped = _windowed_token_mask(corrupted, (4, 4), 12, (4, 4), shift)
    assert torch.equal(mapped, expected)


def test_swin_shifted_window_layers_are_mapped_to_image_patches():
    torch.manual_seed(0)
    kwargs = dict(img_size=64, depths=(2, 2, 1, 1), embed_dim=32, num_heads=(1, 1, 2, 2), window_size=4)
    model = PixelModel(timm.create_model('swin_tiny_patch4_window7_224', num_classes=10, **kwargs).eval(), img_size=64)
    assert model.model.layers[0].blocks[1].shift_size == (2, 2)  # a shifted-window block is measured too
    result = evaluate_attention_stability({'swin': model}, _batches(64), ratio=0.25, seed=0)
    swin = result['models']['swin']
    assert swin['skipped_layers'] == {}
    assert [layer['name'] for layer in swin['layers']] == [
        'layers.0.blocks.0.attn.softmax', 'layers.0.blocks.1.attn.softmax', 'layers.1.blocks.0.attn.softmax',
        'layers.1.blocks.1.attn.softmax', 'layers.2.blocks.0.attn.softmax', 'layers.3.blocks.0.attn.softmax']
    # 16x16 tokens in stage 0, a quarter of the patches corrupted: a quarter of the query rows
    assert all(layer['corrupted_rows'] * 4 == layer['rows'] for layer in swin['layers'][:4])


def test_maxvit_partitioned_layers_are_named_in_one_line():
    model, img_size = _pixel_model('maxvit_tiny_rw_224')
    result = evaluate_attention_stability({'maxvit': model}, _batches(img_size), ratio=0.25, seed=0)
    skipped = result['models']['maxvit']['skipped_layers']
    assert skipped and all(r.startswith('windowed attention: keys are window-local') for r in skipped.values())
    last = format_attention_table(result).splitlines()[-1]
    assert last.startswith(f'maxvit: {len(skipped)} attention layers not measured (') and last.endswith(
        'windowed attention: keys are window-local, not mapped to image patches')


def test_pvt_spatial_reduction_layers_map_queries_and_reduced_keys():
    model, img_size = _pixel_model('pvt_v2_b0')
    result = evaluate_attention_stability({'pvt': model}, _batches(img_size), ratio=0.25, seed=0)
    pvt = result['models']['pvt']
    assert pvt['skipped_layers'] == {}
    assert len(pvt['layers']) == 4
    # stage 0 has 16x16 queries (4 px tokens) under 4x4 patches: a quarter of the patches, a quarter of the rows
    stage0 = pvt['layers'][0]
    assert stage0['corrupted_rows'] * 4 == stage0['rows']
    for layer in pvt['layers']:
        assert 0 < layer['attention_to_corrupted_clean'] < 1 and layer['js'] >= 0


def test_worst_case_raises_its_objective_and_is_never_milder_than_random_patches():
    from timm_rspc.analysis import WorstCasePatches
    torch.manual_seed(0)
    vit = timm.create_model('vit_tiny_patch16_224', img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2,
                            num_classes=3).eval()
    model = PixelModel(vit)
    gen = torch.Generator().manual_seed(0)
    pixels = torch.rand(24, 3, 32, 32, generator=gen)
    targets = vit(model.normalize(pixels)).argmax(-1)  # every image correct when clean: room for both to hurt
    worst = WorstCasePatches(pixels, ratio=0.15, steps=30, lr=0.05, batch_size=8, seed=0)
    result = evaluate_sensitivity({'m': model}, [(pixels[:12], targets[:12]), (pixels[12:], targets[12:])],
                                  [NoiseOcclusion(), worst], ratio=0.15, seed=0)
    history = result['models']['m']['perturbed']['worst_case']['attacker']
    # the C returned is the best one scored on the fixed batch, the initial one included: never below the start
    assert history['align_loss_end'] == max(value for _, value in history['evaluations'])
    assert history['align_loss_end'] >= history['align_loss_start'] == history['evaluations'][0][1]
    assert [step for step, _ in history['evaluations']] == [0, 10, 20, 30]
    scores = result['models']['m']['perturbed']
    assert scores['worst_case']['accuracy'] <= scores['noise_occlusion']['accuracy']
    assert 0 <= history['chosen_fraction'] <= 1
