"""What the analyses print and write means the same everywhere: one sign convention for drops (terminal, CSV, JSON)."""
import csv
import json

from timm_rspc.analysis.report import DROP_CONVENTION, format_sensitivity_table, write_csv, write_json
from timm_rspc.analysis.sensitivity import sensitivity_rows


def _result():
    def scores(accuracy, confidence, clean=(75.0, 60.0)):
        return dict(accuracy=accuracy, confidence=confidence, accuracy_drop=clean[0] - accuracy,
                    confidence_drop=clean[1] - confidence)
    return {'analysis': 'sensitivity', 'num_images': 8, 'ratio': 0.1, 'patches_per_image': 2, 'num_patches': 16,
            'seed': 0, 'perturbations': [],
            'models': {'m': {'clean': dict(accuracy=75.0, confidence=60.0),
                             'perturbed': {'noise': scores(53.125, 40.0), 'none': scores(75.0, 60.0),
                                           'helps': scores(76.25, 61.0)}}}}


def test_drops_have_one_sign_in_terminal_csv_and_json(tmp_path):
    result = _result()
    table = format_sensitivity_table(result)
    assert DROP_CONVENTION in table.splitlines()[0]
    printed = {line.split('|')[1].strip(): line.split('|')[2] for line in table.splitlines()[4:]}  # after clean
    assert printed['noise'].strip() == '53.1 ( 21.9)'  # a loss is positive, as in the files
    assert printed['none'].strip() == '75.0 (  0.0)'  # never -0.0
    assert printed['helps'].strip() == '76.2 ( -1.2)'  # a gain is negative
    write_csv(str(tmp_path / 'sensitivity.csv'), sensitivity_rows(result))
    write_json(result, str(tmp_path / 'analysis.json'))
    rows = {r['perturbation']: r for r in csv.DictReader(open(tmp_path / 'sensitivity.csv'))}
    stored = json.load(open(tmp_path / 'analysis.json'))['models']['m']['perturbed']
    for name, text in printed.items():
        drop = float(text.split('(')[1].rstrip(') '))
        assert round(float(rows[name]['accuracy_drop']), 1) == drop == round(stored[name]['accuracy_drop'], 1)


def test_figures_have_units_a_shared_attention_scale_and_legends_off_the_data():
    import torch
    from timm_rspc.analysis.plots import attention_grid_figure, attention_stability_figure, sensitivity_figure
    result = _result()
    result['perturbations'] = [{'name': name} for name in result['models']['m']['perturbed']]
    fig = sensitivity_figure(result)
    fig.canvas.draw()
    top_axes = fig.axes[0]
    legend = top_axes.get_legend().get_window_extent()
    assert legend.y0 >= top_axes.get_window_extent().y1 - 1  # above the bars, not over them
    layers = [dict(js=0.1, js_corrupted_rows=0.2, cosine=0.8, cosine_corrupted_rows=0.6, attention_to_corrupted=0.3,
                   attention_to_corrupted_clean=0.12)]
    fig = attention_stability_figure({'patches_per_image': 2, 'num_patches': 16, 'num_images': 8,
                                      'models': {'m': {'layers': layers}}})
    assert [ax.get_ylabel() for ax in fig.axes] == ['JS divergence (nats x 1000)', 'cosine similarity',
                                                    'attention mass (%)']
    assert fig.axes[0].lines[0].get_ydata()[0] == 100.0 and fig.axes[2].lines[0].get_ydata()[0] == 30.0
    gen = torch.Generator().manual_seed(0)
    maps = {'clean': torch.rand(2, 3, 32, 32, generator=gen), 'corrupted': torch.rand(2, 3, 32, 32, generator=gen),
            'keep': torch.ones(2, 16), 'query_patch': 5, 'grid': (4, 4),
            'models': {name: {'layer': 'blocks.1.attn.softmax', 'clean': scale * torch.rand(2, 4, 4, generator=gen),
                              'corrupted': torch.rand(2, 4, 4, generator=gen)} for name, scale in (('a', 1), ('b', 3))}}
    fig = attention_grid_figure(maps)
    maps_per_row = [[im for ax in fig.axes[row * 6 + 2:row * 6 + 6] for im in ax.images] for row in range(2)]
    for images in maps_per_row:  # one colour scale per row, shared by both models and both images
        assert len({im.get_clim() for im in images}) == 1
    assert len(fig.axes) == 2 * 6 + 2  # plus one colourbar per row
