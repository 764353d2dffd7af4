"""Model names another package already registered in timm's registry: one warning naming both sides and the choice.

``alibaba/easyrobust`` registers ``rvt_*`` and ``fan_*_p16_224`` too. Each case runs in a fresh interpreter (the
registry is process-wide): a throwaway module registers colliding entrypoints before or after ``import timm_rspc``.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

FAKE = textwrap.dedent('''
    import torch.nn as nn
    from timm.models import register_model

    class OtherRvt(nn.Module):
        def forward(self, x):
            return x

    @register_model
    def rvt_tiny(pretrained=False, **kwargs):
        return OtherRvt()

    @register_model
    def fan_small_12_p16_224(pretrained=False, **kwargs):
        return OtherRvt()
''')

REPORT = textwrap.dedent('''
    import json, warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        {imports}
    import timm
    print(json.dumps({{
        'warnings': [[w.category.__name__, str(w.message)] for w in caught],
        'rvt_tiny': type(timm.create_model('rvt_tiny')).__module__,
        'fan_small_12_p16_224': type(timm.create_model('fan_small_12_p16_224')).__module__,
        'rvt_s_rspc': type(timm.create_model('rvt_s_rspc')).__module__,
    }}))
''')


def _run(tmp_path, imports):
    (tmp_path / 'other_models.py').write_text(FAKE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get('PYTHONPATH')])),
               OMP_NUM_THREADS='1')
    code = REPORT.format(imports='\n    '.join(imports))
    done = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _registry_warnings(report):
    return [(category, text) for category, text in report['warnings']
            if category == 'ModelNameCollisionWarning' or text.startswith('Overwriting ')]


def test_importing_timm_rspc_last_warns_once_naming_both_modules_and_what_create_model_builds(tmp_path):
    report = _run(tmp_path, ['import other_models', 'import timm_rspc'])
    assert report['rvt_tiny'] == 'timm_rspc.models.rvt'
    assert report['fan_small_12_p16_224'] == 'timm_rspc.models.fan'
    assert report['rvt_s_rspc'] == 'timm_rspc.models.rvt'
    found = _registry_warnings(report)
    assert len(found) == 1, found  # one warning for the import, and none of timm's per-name ones
    category, text = found[0]
    assert category == 'ModelNameCollisionWarning'
    for part in ('other_models', 'fan_small_12_p16_224', 'rvt_tiny', 'timm_rspc.models.rvt', 'timm_rspc.models.fan',
                 "now build timm-rspc's models", 'import timm_rspc before other_models'):
        assert part in text, (part, text)


def test_importing_timm_rspc_first_lets_the_other_package_win(tmp_path):
    report = _run(tmp_path, ['import timm_rspc', 'import other_models'])
    assert report['rvt_tiny'] == 'other_models'
    assert report['fan_small_12_p16_224'] == 'other_models'
    assert report['rvt_s_rspc'] == 'timm_rspc.models.rvt'  # the RSPC names are the package's own either way
    assert not [w for w in _registry_warnings(report) if w[0] == 'ModelNameCollisionWarning']


def test_no_collision_no_warning(tmp_path):
    report = _run(tmp_path, ['import timm_rspc'])
    assert _registry_warnings(report) == []
    assert report['rvt_tiny'] == 'timm_rspc.models.rvt'
