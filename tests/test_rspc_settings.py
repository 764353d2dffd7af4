"""RSPCSettings: one definition of every RSPC setting, its default, flag and range, checked before any work."""
import argparse
import dataclasses
import logging
import math

import pytest
import torch
import yaml

from timm_rspc.method import RSPCHook, RSPCSettings, RSPCTask, add_rspc_args, create_rspc_task
from timm_rspc.method.corruption_optimizer import CorruptionOptimizer

# setting -> (flag, allowed range as worded in the messages, an in-range value)
NUMERIC = {
    'ratio': ('--rspc-ratio', 'in (0, 1)', 0.2),
    'align_weight': ('--rspc-lambda', '>= 0', 0.01),
    'corruption_lr': ('--rspc-lr', '> 0', 1e-3),
    'corruption_momentum': ('--rspc-momentum', 'in [0, 1)', 0.5),
    'corruption_weight_decay': ('--rspc-weight-decay', '>= 0', 0.0),
    'corruption_clip_grad': ('--rspc-clip-grad', '>= 0', 1.0),
}
BAD_NUMBERS = ['nan', 'inf', '-inf', '-1']


def rspc_parser():
    parser = argparse.ArgumentParser(prog='train.py')
    add_rspc_args(parser)
    return parser


def test_every_numeric_setting_has_a_case_here():
    numeric = {f.name for f in dataclasses.fields(RSPCSettings) if f.metadata['interval'] is not None}
    assert numeric == set(NUMERIC)


@pytest.mark.parametrize('name', list(NUMERIC))
@pytest.mark.parametrize('text', BAD_NUMBERS)
def test_parser_rejects_non_finite_and_out_of_range_values(name, text, capsys):
    flag, allowed, _ = NUMERIC[name]
    if text == '-1' and allowed == 'in (0, 1)':
        text = '1'  # also out of (0, 1), from above
    with pytest.raises(SystemExit) as exit_info:
        rspc_parser().parse_args([f'{flag}={text}'])  # '=': argparse reads '-inf' alone as a flag
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == f'train.py: error: argument {flag}: must be a finite number {allowed}, got {float(text)!r}'


@pytest.mark.parametrize('name', list(NUMERIC))
@pytest.mark.parametrize('value', [math.nan, math.inf, -math.inf, -1.0, True, '0.1'])
def test_constructor_rejects_non_finite_and_out_of_range_values(name, value):
    flag, allowed, _ = NUMERIC[name]
    message = f'RSPC setting {name} ({flag}) must be a finite number {allowed}, got {value!r}.'
    with pytest.raises(ValueError) as error:
        RSPCSettings(**{name: value})
    assert str(error.value) == message
    # the task and the hook check before touching the model (None here): nothing is built first
    with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)').replace('[', r'\[')):
        RSPCTask(None, **{name: value})
    with pytest.raises(ValueError, match=f'RSPC setting {name} '):
        RSPCHook(None, **{name: value})


def test_range_edges():
    for name, (flag, _, good) in NUMERIC.items():
        assert getattr(RSPCSettings(**{name: good}), name) == good
    assert RSPCSettings(align_weight=0, corruption_weight_decay=0, corruption_momentum=0).align_weight == 0.0
    assert RSPCSettings(corruption_clip_grad=None).corruption_clip_grad is None
    assert isinstance(RSPCSettings(align_weight=1).align_weight, float)
    for name, value in (('ratio', 0.0), ('ratio', 1.0), ('corruption_lr', 0.0), ('corruption_momentum', 1.0)):
        with pytest.raises(ValueError, match=f'{name} .* must be a finite number'):
            RSPCSettings(**{name: value})


def test_choices_optimizer_and_cross_checks():
    with pytest.raises(ValueError, match=r"noise \(--rspc-noise\) must be one of normalized, pixel, got 'gauss'"):
        RSPCSettings(noise='gauss')
    with pytest.raises(ValueError, match=r"corruption_opt \(--rspc-opt\) must be a timm optimiser name.*'sgdd'"):
        RSPCSettings(corruption_opt='sgdd')
    assert RSPCSettings(corruption_opt='lookahead_adamw').corruption_opt == 'lookahead_adamw'
    with pytest.raises(ValueError, match=r'normalize .* set --rspc-clip-grad \(corruption_clip_grad\) > 0'):
        RSPCSettings(corruption_clip_mode='normalize', corruption_clip_grad=0)
    with pytest.raises(TypeError, match='Unknown RSPC setting.s. lr; the settings are'):
        RSPCSettings.resolve(lr=0.1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        RSPCSettings().ratio = 0.5
    assert RSPCSettings(blocks=[0, -1]).blocks == (0, -1)


def test_parser_rejects_bad_words(capsys):
    with pytest.raises(SystemExit):
        rspc_parser().parse_args(['--rspc-opt', 'sgdd'])
    assert "argument --rspc-opt: must be a timm optimiser name" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        rspc_parser().parse_args(['--rspc-noise', 'gauss'])
    assert "argument --rspc-noise: invalid choice: 'gauss'" in capsys.readouterr().err


def test_flags_are_derived_from_the_settings():
    parser = rspc_parser()
    assert RSPCSettings.from_args(parser.parse_args([])) == RSPCSettings()
    args = parser.parse_args(['--rspc-ratio', '0.2', '--rspc-lambda', '0.01', '--rspc-blocks=-1,8:',
                              '--rspc-opt', 'adamw', '--rspc-lr', '1e-3', '--rspc-clip-grad', '0',
                              '--rspc-clip-mode', 'norm', '--rspc-momentum', '0', '--rspc-weight-decay', '0'])
    assert RSPCSettings.from_args(args) == RSPCSettings(
        ratio=0.2, align_weight=0.01, blocks='-1,8:', corruption_opt='adamw', corruption_lr=1e-3,
        corruption_clip_grad=0., corruption_momentum=0., corruption_weight_decay=0.)
    help_text = ' '.join(parser.format_help().split())
    assert 'Weight of the feature alignment loss, >= 0 (default: 0.005).' in help_text
    assert 'Corruption model optimiser momentum, in [0, 1) (default: 0.9).' in help_text
    for f in dataclasses.fields(RSPCSettings):
        assert f.metadata['flag'] in help_text


def test_reading_a_config_file(tmp_path, caplog):
    """A YAML config (timm's args.yaml) as timm writes it, plus what a hand-written one may hold: YAML 1.1 reads
    ``1e-3`` as a string, ``.nan`` as NaN; a misspelt ``rspc_*`` key is named in a warning."""
    path = tmp_path / 'args.yaml'
    path.write_text('rspc: true\nrspc_ratio: 0.2\nrspc_lr: 1e-3\nrspc_clip_grad: null\nrspc_blocks: "0,-1"\n'
                    'rspc_lamda: 0.1\nlr: 0.5\n')
    config = yaml.safe_load(path.read_text())
    assert config['rspc_lr'] == '1e-3'
    with caplog.at_level(logging.WARNING):
        settings = RSPCSettings.from_args(config)
    assert settings == RSPCSettings(ratio=0.2, corruption_lr=1e-3, corruption_clip_grad=None, blocks='0,-1')
    assert 'Ignoring unknown RSPC setting(s) rspc_lamda' in caplog.text
    assert RSPCSettings.from_args(yaml.safe_load(yaml.safe_dump(settings.to_args()))) == settings
    with pytest.raises(ValueError, match=r'align_weight \(--rspc-lambda\) must be a finite number >= 0, got nan'):
        RSPCSettings.from_args(yaml.safe_load('rspc_lambda: .nan'))
    with pytest.raises(ValueError, match=r"corruption_lr \(--rspc-lr\) must be a finite number > 0, got 'fast'"):
        RSPCSettings.from_args({'rspc_lr': 'fast'})


def test_factory_checks_a_namespace_before_touching_the_model():
    """A config file read by timm's train.py sets parser defaults, which argparse does not type-check."""
    parser = rspc_parser()
    parser.set_defaults(rspc=True, rspc_lambda=float('nan'))
    with pytest.raises(ValueError, match=r'align_weight \(--rspc-lambda\) must be a finite number >= 0, got nan'):
        create_rspc_task(parser.parse_args([]), model=None)


def test_corruption_optimizer_takes_the_settings():
    module = torch.nn.Linear(4, 4, bias=False)
    optimizer = CorruptionOptimizer(module, RSPCSettings(corruption_lr=1e-3), corruption_weight_decay=0.)
    group = optimizer.optimizer.param_groups[0]
    assert (group['lr'], group['weight_decay'], group['momentum'], group['nesterov']) == (1e-3, 0., 0.9, True)
    assert optimizer.clip_grad == 5.0 and optimizer.clip_mode == 'norm'
    with pytest.raises(ValueError, match=r'corruption_lr \(--rspc-lr\) must be a finite number > 0, got nan'):
        CorruptionOptimizer(module, corruption_lr=math.nan)


@pytest.mark.parametrize('value', ['nan', '-1'])
def test_demo_rejects_a_bad_lambda_before_any_work(value, tmp_path, capsys):
    from timm_rspc.cli import main
    output = tmp_path / 'demo'
    with pytest.raises(SystemExit) as exit_info:
        main(['demo', '--quick', '--output', str(output), '--data-dir', str(tmp_path / 'data'),
              f'--rspc-lambda={value}'])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        f'error: argument --rspc-lambda: must be a finite number >= 0, got {float(value)!r}')
    assert not output.exists() and not (tmp_path / 'data').exists()


def test_demo_config_is_checked_before_the_data_is_written(tmp_path):
    from dataclasses import replace

    from timm_rspc.demo.experiment import QUICK, run_demo
    with pytest.raises(ValueError, match=r'corruption_lr \(--rspc-lr\) must be a finite number > 0, got inf'):
        run_demo(replace(QUICK, rspc_lr=math.inf), str(tmp_path / 'out'), str(tmp_path / 'data'))
    assert not (tmp_path / 'data').exists()
