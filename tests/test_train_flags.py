"""``timm-rspc train`` has timm train.py's flags: names, defaults, kinds; checked against the flag list recorded from
timm's script (tests/data/timm_train_py_flags.json, written by ``python -m timm_rspc.train.timm_flags``)."""
import json
import logging
import os

import pytest
import yaml

from timm_rspc.train import ConfigError, build_parser, parse_args
from timm_rspc.train.args import DEFAULT_DIFFERENCES, METHOD_CHANGE_FLAG, UNSUPPORTED
from timm_rspc.train.timm_flags import describe_flags

RECORDED = os.path.join(os.path.dirname(__file__), 'data', 'timm_train_py_flags.json')
# Flags this trainer adds to timm's (timm's own -c / --config lives in a separate parser of train.py).
ADDED = {'config', 'output_exists', 'allow_method_change', 'verbose'}


def _recorded():
    with open(RECORDED) as f:
        return json.load(f)


def test_parser_has_every_flag_of_timm_train_py_with_its_default():
    timm_flags = {record['dest']: record for record in _recorded()['flags']}
    ours = {record['dest']: record for record in describe_flags(build_parser())}
    missing = sorted(set(timm_flags) - set(ours))
    assert not missing, f'flags of timm train.py missing here: {missing}'
    for dest, record in timm_flags.items():
        expected = dict(record, default=None) if dest in DEFAULT_DIFFERENCES else record
        found = dict(ours[dest], default=None) if dest in DEFAULT_DIFFERENCES else ours[dest]
        assert found == expected, dest
    extra = {dest for dest in set(ours) - set(timm_flags) if not dest.startswith('rspc')}
    assert extra == ADDED


def test_unsupported_flags_are_named_in_help_and_refused(capsys):
    with pytest.raises(SystemExit):
        build_parser('timm-rspc train').parse_args(['--help'])
    help_text = ' '.join(capsys.readouterr().out.split())
    for feature, entries in UNSUPPORTED:
        assert f"{feature}: {' '.join(flags[0] for flags, _ in entries)}" in help_text
    assert METHOD_CHANGE_FLAG in help_text and '--device default: cuda when available' in help_text
    with pytest.raises(ConfigError, match=r"--naflex-loader \(the NaFlex loader\) is not supported by this trainer; "
                                          r"run timm's own train.py"):
        parse_args(['--naflex-loader'])
    with pytest.raises(ConfigError, match=r'--kd-model-name \(knowledge distillation\)'):
        parse_args(['--kd-model-name', 'resnet50'])


def test_timm_args_yaml_loads_and_unknown_keys_only_warn(tmp_path, caplog):
    """An args.yaml as timm's train.py writes it (every flag at its value) is a valid -c config; keys that are no
    flag at all are named in a warning."""
    values = {record['dest']: record['default'] for record in _recorded()['flags']}
    values.update(model='resnet18', batch_size=6, mixup=0.2, typo_key=1, another=2)
    config = tmp_path / 'args.yaml'
    config.write_text(yaml.safe_dump(values))
    with caplog.at_level(logging.WARNING):
        args, _ = parse_args(['-c', str(config), '--epochs', '3'])
    assert (args.model, args.batch_size, args.mixup, args.epochs) == ('resnet18', 6, 0.2, 3)
    assert 'ignoring keys that are not flags of this trainer: another, typo_key' in caplog.text
    config.write_text(yaml.safe_dump(dict(values, naflex_loader=True)))
    with pytest.raises(ConfigError, match='--naflex-loader'):
        parse_args(['-c', str(config)])


@pytest.mark.skipif(not os.environ.get('TIMM_SCRIPTS_DIR'), reason='needs a timm checkout (TIMM_SCRIPTS_DIR)')
def test_recorded_flags_are_those_of_the_checkout(monkeypatch):
    """The recorded list is the checkout's train.py, so a changed train.py shows up here first."""
    import sys
    from timm_rspc.train.timm_script import load_script
    monkeypatch.setattr(sys, 'argv', ['train.py'])
    namespace = load_script(os.path.join(os.environ['TIMM_SCRIPTS_DIR'], 'train.py'))
    assert describe_flags(namespace['parser']) == _recorded()['flags']
