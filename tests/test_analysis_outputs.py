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
    write_csv(sensitivity_rows(result), str(tmp_path / 'sensitivity.csv'))
    write_json(result, str(tmp_path / 'analysis.json'))
    rows = {r['perturbation']: r for r in csv.DictReader(open(tmp_path / 'sensitivity.csv'))}
    stored = json.load(open(tmp_path / 'analysis.json'))['models']['m']['perturbed']
    for name, text in printed.items():
        drop = float(text.split('(')[1].rstrip(') '))
        assert round(float(rows[name]['accuracy_drop']), 1) == drop == round(stored[name]['accuracy_drop'], 1)
