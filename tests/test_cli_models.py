"""`timm-rspc models`: aligned columns without trailing spaces, real sources in JSON, a pattern without a match is
an error (exit 1), and --all lists any timm model's tags."""
import json

from timm_rspc.cli import main


def test_table_is_aligned_without_trailing_spaces(capsys):
    assert main(['models', 'rvt*']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith('model') and all(line == line.rstrip() for line in lines)
    column = lines[0].index('pretrained tags')
    rows = {line[:column].strip(): line[column:] for line in lines[1:]}
    assert rows['rvt_small_plus'].split(', ')[:1] == ['rspc_in1k'] and 'rspc_cifar10' in rows['rvt_small_plus']
    assert rows['rvt_tiny'] == '-'  # an architecture without released weights


def test_json_has_the_sources_of_models_with_weights(capsys):
    assert main(['models', 'rvt_s_rspc', '--json']) == 0
    row, = json.loads(capsys.readouterr().out)
    assert row['name'] == 'rvt_s_rspc' and row['tags'] == ['rspc_in1k']
    assert row['url'].startswith('https://github.com/guoyongcs/RSPC/releases/')


def test_pattern_without_match_is_an_error(capsys):
    assert main(['models', 'vit*']) == 1
    err = capsys.readouterr().err
    assert err == ("timm-rspc models: none of this package's models (RVT, FAN) matches 'vit*'; --all searches every "
                   "timm model.\n")


def test_all_lists_any_timm_models_tags(capsys):
    assert main(['models', '--all', '--pretrained', 'vit_tiny_patch16_224*']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert 'vit_tiny_patch16_224.augreg_in21k_ft_in1k' in [line.split()[0] for line in lines]


def test_ctrl_c_while_a_command_starts_is_one_line(capsys, monkeypatch):
    """Importing torch and a command's module takes seconds; a Ctrl-C then gave a traceback."""
    import importlib

    def interrupted(name, *args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(importlib, 'import_module', interrupted)
    assert main(['corrupt', 'src', 'dst']) == 130
    err = capsys.readouterr().err
    assert err == 'timm-rspc corrupt: interrupted while starting; nothing was done.\n'
