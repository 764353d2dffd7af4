"""Publishing weights: convert, export, model card, push; all offline.

The Hub side is real code up to the HTTP boundary: loading goes through ``timm.create_model('local-dir:...')`` and
``'hf-hub:...'`` (from a Hub cache laid out here, ``HF_HUB_OFFLINE=1``), pushing through ``huggingface_hub``'s upload
code against a local HTTP server that plays the Hub and records what it receives.
"""
import argparse
import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from safetensors.torch import load_file, save_file

import timm
from timm_rspc.cli import main as cli_main
from timm_rspc.hub import (
    CardExistsError, ReleasedWeight, convert_checkpoint, export_all_released, export_model, push_folder,
    read_results, results_table, sha256_file,
)
from timm_rspc.hub.model_card import training_recipe
from timm_rspc.hub.released import select_released
from timm_rspc.models.checkpoint_loading import CheckpointError, CheckpointMismatchError
from timm_rspc.models.hub_ids import with_hub_ids
from timm_rspc.models.paper_results import PAPER_RESULTS
from timm_rspc.models.release_info import FAN_RELEASES, RSPC_RELEASES

MODEL = 'vit_tiny_patch16_224'
MODEL_KWARGS = dict(img_size=32, depth=2, embed_dim=64, num_heads=2)
NUM_CLASSES = 10
EXPORT_FILES = {'model.safetensors', 'config.json', 'README.md', 'timm_rspc_export.json'}


def _tiny_model(seed):
    torch.manual_seed(seed)
    return timm.create_model(MODEL, num_classes=NUM_CLASSES, **MODEL_KWARGS).eval()


@pytest.fixture(scope='module')
def weights():
    return {'plain': _tiny_model(0).state_dict(), 'ema': _tiny_model(1).state_dict()}


def _train_args():
    """What a timm-style training run records: the model, its build arguments, the recipe, and private paths. The
    model's size is a build argument (``--model-kwargs img_size=32``); ``img_size`` is the data's (timm's train.py
    never passes it to create_model)."""
    return argparse.Namespace(
        model=MODEL, num_classes=NUM_CLASSES, img_size=32, model_kwargs=dict(MODEL_KWARGS),
        epochs=300, lr=5e-4, opt='adamw', weight_decay=0.05, rspc=True, rspc_ratio=0.1,
        data_dir='/private/imagenet', output='/private/runs')


def _write_container(path, fmt, weights):
    if fmt == 'safetensors':
        save_file(dict(weights['plain']), str(path))
        return
    containers = {
        'timm_train': {'state_dict': weights['plain'], 'state_dict_ema': weights['ema'], 'arch': MODEL,
                       'epoch': 299, 'args': _train_args(), 'metric': 79.5},
        'deit_style': {'model': weights['plain'], 'model_ema': weights['ema'], 'epoch': 299,
                       'optimizer': {'state': {}, 'param_groups': [{'lr': 0.1}]}},
        'ddp_prefixed': {'state_dict': {f'module.{k}': v for k, v in weights['plain'].items()}},
        'bare': weights['plain'],
    }
    torch.save(containers[fmt], path)


@pytest.fixture
def run_checkpoint(tmp_path, weights):
    path = tmp_path / 'run' / 'checkpoint-299.pth.tar'
    path.parent.mkdir()
    _write_container(path, 'timm_train', weights)
    return path


def _sha256(path):
    return hashlib.sha256(open(path, 'rb').read()).hexdigest()


def _logits(model, seed=123):
    torch.manual_seed(seed)
    with torch.no_grad():
        return model.eval()(torch.randn(2, 3, 32, 32))


# ---------------------------------------------------------------------------------------------------- convert


@pytest.mark.parametrize('fmt', ['timm_train', 'deit_style', 'ddp_prefixed', 'bare', 'safetensors'])
def test_convert_each_container_format(tmp_path, weights, fmt):
    source = tmp_path / (f'{fmt}.safetensors' if fmt == 'safetensors' else f'{fmt}.pth.tar')
    _write_container(source, fmt, weights)
    out = tmp_path / 'out' / 'model.safetensors'
    record = convert_checkpoint(source, out, model_name=MODEL, num_classes=NUM_CLASSES, model_kwargs=MODEL_KWARGS)
    converted = load_file(str(out))
    assert converted.keys() == weights['plain'].keys()
    assert all(torch.equal(converted[k], v) for k, v in weights['plain'].items())
    on_disk = json.loads((tmp_path / 'out' / 'model.json').read_text())
    assert on_disk == record
    assert record['sha256'] == _sha256(out) and record['source_sha256'] == _sha256(source)
    assert record['weights'] == 'non-ema' and record['num_classes'] == NUM_CLASSES


def test_convert_chooses_ema_only_when_asked(tmp_path, weights, run_checkpoint):
    record = convert_checkpoint(run_checkpoint, tmp_path / 'ema.safetensors', use_ema=True)
    converted = load_file(str(tmp_path / 'ema.safetensors'))
    assert all(torch.equal(converted[k], v) for k, v in weights['ema'].items())
    assert record['weights'] == 'ema'
    # The model, num_classes and build arguments came from the run's stored arguments.
    assert record['model'] == MODEL and record['num_classes'] == NUM_CLASSES


def test_convert_loads_strictly_and_writes_nothing_on_mismatch(tmp_path, run_checkpoint):
    out = tmp_path / 'bad.safetensors'
    with pytest.raises(CheckpointMismatchError, match=r"\(non-EMA\) has a classifier for 10 classes \(head\.weight "
                                                      r"\(10, 64\)\), the model one for 5 \(head\.weight \(5, 64\)\)"):
        convert_checkpoint(run_checkpoint, out, num_classes=5)
    assert not out.exists() and not (tmp_path / 'bad.json').exists()


def test_convert_never_unpickles_objects(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ('echo pwned',))
    source = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'hook': Payload()}, source)
    with pytest.raises(CheckpointError, match='never unpickles'):
        convert_checkpoint(source, tmp_path / 'evil.safetensors', model_name=MODEL)


def test_convert_refuses_to_overwrite(tmp_path, run_checkpoint):
    out = tmp_path / 'model.safetensors'
    out.write_bytes(b'precious')
    with pytest.raises(FileExistsError, match='pass --overwrite'):
        convert_checkpoint(run_checkpoint, out)
    assert out.read_bytes() == b'precious'
    convert_checkpoint(run_checkpoint, out, overwrite=True)
    assert load_file(str(out)).keys()
    with pytest.raises(ValueError, match='replace the checkpoint'):
        convert_checkpoint(out, out, model_name=MODEL, overwrite=True)


def test_convert_cli_writes_record_next_to_output(tmp_path, run_checkpoint, capsys):
    assert cli_main(['convert', str(run_checkpoint), '--json']) == 0
    record = json.loads(capsys.readouterr().out)
    out = run_checkpoint.parent / 'checkpoint-299.safetensors'
    assert record['sha256'] == _sha256(out)
    assert json.loads((run_checkpoint.parent / 'checkpoint-299.json').read_text()) == record
    with pytest.raises(SystemExit) as exit_info:
        cli_main(['convert', str(run_checkpoint)])
    assert exit_info.value.code == 2
    assert 'Refusing to overwrite existing files' in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- export


@pytest.fixture
def exported(tmp_path, run_checkpoint):
    results = tmp_path / 'bench.json'
    results.write_text(json.dumps({'results': {'imagenet_top1': 80.1, 'imagenet_c_mce': 52.25},
                                   'source': 'timm-rspc bench'}))
    folder = tmp_path / 'export'
    manifest = export_model(folder, MODEL, checkpoint=run_checkpoint, repo_id='org/vit-rspc', results=results)
    return folder, manifest


def test_export_round_trip_through_local_dir(exported, weights):
    folder, manifest = exported
    assert {p.name for p in folder.iterdir()} == EXPORT_FILES
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == MODEL and config['num_classes'] == NUM_CLASSES
    assert config['model_args']['depth'] == 2 and config['model_args']['img_size'] == [32, 32]
    assert config['pretrained_cfg']['input_size'] == [3, 32, 32]
    assert 'tag' not in config['pretrained_cfg']  # the registry's tag would mislabel one's own weights
    for name, entry in manifest['files'].items():
        assert entry['sha256'] == _sha256(folder / name)
    assert manifest['source']['sha256'] and manifest['weights'] == 'non-ema'

    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True)
    reference = _tiny_model(0)
    assert torch.equal(_logits(loaded), _logits(reference))


def _lay_out_hub_cache(hub_cache, repo_id, folder, commit='0123456789abcdef0123456789abcdef01234567'):
    """Files of ``folder`` as huggingface_hub caches a downloaded repository: blobs, a snapshot, refs/main."""
    repo_dir = hub_cache / ('models--' + repo_id.replace('/', '--'))
    (repo_dir / 'blobs').mkdir(parents=True)
    snapshot = repo_dir / 'snapshots' / commit
    snapshot.mkdir(parents=True)
    for name in ('config.json', 'model.safetensors', 'README.md'):
        data = (folder / name).read_bytes()
        blob = repo_dir / 'blobs' / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    (repo_dir / 'refs').mkdir()
    (repo_dir / 'refs' / 'main').write_text(commit)


def test_export_round_trip_through_hf_hub_offline(tmp_path, exported):
    folder, _ = exported
    hf_home = tmp_path / 'hf_home'
    _lay_out_hub_cache(hf_home / 'hub', 'org/vit-rspc', folder)
    # A registered tag whose cfg names the Hub repo (as `with_hub_ids` makes it) next to its custom-loaded release
    # URL must load the Hub copy.
    release_cfg = {'url': 'https://example.invalid/rspc.pth.tar', 'custom_load': True, 'num_classes': NUM_CLASSES,
                   'input_size': (3, 32, 32)}
    cfg = with_hub_ids({f'{MODEL}.rspc_test': release_cfg},
                       hub_ids={f'{MODEL}.rspc_test': 'org/vit-rspc'})[f'{MODEL}.rspc_test']
    script = textwrap.dedent(f"""
        import sys, torch, timm
        torch.manual_seed(123)
        x = torch.randn(2, 3, 32, 32)
        by_name = timm.create_model('hf-hub:org/vit-rspc', pretrained=True).eval()
        by_cfg = timm.create_model({MODEL!r}, pretrained=True, pretrained_cfg_overlay={cfg!r},
                                   num_classes={NUM_CLASSES}, **{MODEL_KWARGS!r}).eval()
        with torch.no_grad():
            torch.save({{'by_name': by_name(x), 'by_cfg': by_cfg(x)}}, sys.argv[1])
    """)
    env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_OFFLINE='1', HF_HUB_DISABLE_TELEMETRY='1')
    env.pop('HF_HUB_CACHE', None)
    out = tmp_path / 'logits.pt'
    proc = subprocess.run([sys.executable, '-c', script, str(out)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logits = torch.load(out)
    expected = _logits(_tiny_model(0))
    assert torch.equal(logits['by_name'], expected)
    assert torch.equal(logits['by_cfg'], expected)


def test_export_refuses_to_overwrite_and_leaves_folder_intact(tmp_path, run_checkpoint):
    folder = tmp_path / 'export'
    folder.mkdir()
    (folder / 'README.md').write_text('my hand-written card')
    with pytest.raises(FileExistsError, match='README.md'):
        export_model(folder, MODEL, checkpoint=run_checkpoint)
    assert [p.name for p in folder.iterdir()] == ['README.md']
    assert (folder / 'README.md').read_text() == 'my hand-written card'
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.timm_rspc_export_')]  # no staging left
    export_model(folder, MODEL, checkpoint=run_checkpoint, overwrite=True)
    assert {p.name for p in folder.iterdir()} == EXPORT_FILES


def test_export_cli(tmp_path, run_checkpoint, capsys):
    folder = tmp_path / 'cli_export'
    argv = ['export', str(folder), '--model', MODEL, '--checkpoint', str(run_checkpoint), '--ema', '--json']
    assert cli_main(argv) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest == json.loads((folder / 'timm_rspc_export.json').read_text())
    assert manifest['weights'] == 'ema'
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True)
    assert torch.equal(_logits(loaded), _logits(_tiny_model(1)))
    with pytest.raises(SystemExit) as exit_info:
        cli_main(argv)
    assert exit_info.value.code == 2 and 'Refusing to overwrite' in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- model card


def test_model_card_renders_results_table_recipe_and_citations(exported):
    folder, manifest = exported
    card = (folder / 'README.md').read_text()
    assert card.startswith('---\n') and '\nlicense: apache-2.0\n' in card
    assert '# Model card for vit-rspc' in card
    assert f"  - Params (M): {manifest['stats']['params_m']}" in card
    assert f"  - GMACs: {manifest['stats']['gmacs']}" in card and '  - Image size: 32 x 32' in card
    assert '| Metric | Data set | This model (measured) |' in card
    # a hand-written results JSON without "images": the card says the count is not stated; one decimal everywhere
    assert '| ImageNet-1k top-1 (↑) | ImageNet-1k val | 80.1 (images not stated) |' in card
    assert '| ImageNet-C mCE (↓) | ImageNet-C, 15 corruptions x 5 severities | 52.2 (images not stated) |' in card
    assert 'Measured: timm-rspc bench.' in card
    assert "timm.create_model('hf-hub:org/vit-rspc', pretrained=True)" in card
    assert 'trained with RSPC' in card  # the run's arguments switch RSPC on
    assert '| `lr` | `0.0005` |' in card and '| `rspc_ratio` | `0.1` |' in card
    assert '/private' not in card  # paths of the run are not part of the recipe
    assert card.index('## Training') < card.index('## Citation')
    assert '@inproceedings{guo2023improving' in card


def test_results_table_against_paper_numbers():
    table = results_table([('RSPC (paper)', PAPER_RESULTS['rvt_small_plus.rspc_in1k']),
                           ('Measured', {'imagenet_top1': 82.0})])
    lines = table.splitlines()
    assert lines[0] == '| Metric | Data set | RSPC (paper) | Measured |'
    assert lines[2] == '| ImageNet-1k top-1 (↑) | ImageNet-1k val | 82.2 | 82.0 |'
    assert '| ImageNet-C mCE (↓) | ImageNet-C, 15 corruptions x 5 severities | 48.4 | - |' in lines
    assert len(lines) == 2 + 5
    cifar = results_table([('paper', PAPER_RESULTS['rvt_small_plus.rspc_cifar10'])]).splitlines()
    assert cifar[2] == '| CIFAR-10 top-1 (↑) | CIFAR-10 test | 97.7 |'  # 97.73: one decimal like the rest


@pytest.mark.parametrize('content, message', [
    ({'results': {'imagenet_top5': 95.0}}, 'unknown metrics'),
    ({'results': {'imagenet_top1': 'high'}}, 'must be a number'),
    ({'imagenet_top1': 80.0}, 'must hold'),
    ({'results': {'imagenet_top1': 80.0}, 'images': {'imagenet_top1': 0}}, 'image counts'),
    ({'results': {'imagenet_top1': 80.0}, 'images': {'imagenet_c_mce': 5}}, 'image counts'),
])
def test_results_json_is_checked(tmp_path, content, message):
    path = tmp_path / 'results.json'
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=message):
        read_results(path)


def test_training_recipe_keeps_recipe_keys_only():
    recipe = training_recipe({'lr': 1e-3, 'data_dir': '/x', 'rspc_lambda': 0.005, 'mixup': 0.0, 'aa': None,
                              'input_size': (3, 224, 224)})
    assert recipe == {'lr': 1e-3, 'input_size': [3, 224, 224], 'mixup': 0.0, 'rspc_lambda': 0.005}


# ---------------------------------------------------------------------------------------------------- push


class FakeHub:
    """A local HTTP server answering the Hub API calls of an upload and recording what it receives."""

    def __init__(self, existing_files=()):
        self.existing_files = set(existing_files)
        self.requests, self.commits, self.created, self.branches = [], [], [], []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, code, body=None, headers=()):
                data = json.dumps(body).encode() if body is not None else b''
                self.send_response(code)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header('Content-Type', 'application/json')
                self.send_header('Content-Length', str(len(data)))
                self.end_headers()
                if self.command != 'HEAD':
                    self.wfile.write(data)

            def _handle(self):
                body = self.rfile.read(int(self.headers.get('Content-Length') or 0))
                hub.requests.append((self.command, self.path, self.headers.get('Authorization')))
                host, path = self.headers['Host'], self.path.split('?')[0]
                if self.command == 'HEAD' and '/resolve/' in path:
                    name = path.split('/resolve/', 1)[1].split('/', 1)[1]
                    if name in hub.existing_files:
                        return self._reply(200, {}, [('X-Repo-Commit', 'f' * 40), ('ETag', '"abc"')])
                    return self._reply(404, {'error': 'Entry not found'}, [('X-Error-Code', 'EntryNotFound')])
                if path == '/api/repos/create':
                    request = json.loads(body)
                    hub.created.append(request)
                    repo_id = f"{request['organization']}/{request['name']}"
                    return self._reply(200, {'url': f'http://{host}/{repo_id}', 'name': repo_id})
                if '/branch/' in path:
                    repo_id, branch = path.split('/api/models/', 1)[1].split('/branch/')
                    hub.branches.append(f'{repo_id}:{branch}')
                    return self._reply(200, {})
                if path == '/api/validate-yaml':
                    return self._reply(200, {'warnings': []})
                if '/preupload/' in path:
                    files = json.loads(body)['files']
                    return self._reply(200, {'files': [
                        {'path': f['path'], 'uploadMode': 'regular', 'shouldIgnore': False} for f in files]})
                if '/commit/' in path:
                    lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                    repo_id, revision = path.split('/api/models/', 1)[1].split('/commit/')
                    hub.commits.append({
                        'repo_id': repo_id, 'revision': revision, 'query': self.path.partition('?')[2],
                        'header': next(l['value'] for l in lines if l['key'] == 'header'),
                        'files': {l['value']['path']: base64.b64decode(l['value']['content'])
                                  for l in lines if l['key'] == 'file'},
                    })
                    reply = {'commitUrl': f'http://{host}/{repo_id}/commit/{"c" * 40}', 'commitOid': 'c' * 40}
                    if 'create_pr=1' in self.path:
                        reply['pullRequestUrl'] = f'http://{host}/{repo_id}/discussions/1'
                    return self._reply(200, reply)
                return self._reply(404, {'error': f'unexpected {self.command} {path}'})

            do_GET = do_POST = do_HEAD = do_PUT = _handle

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.endpoint = f'http://127.0.0.1:{self.server.server_port}'
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_hub():
    hubs = []

    def make(existing_files=()):
        hubs.append(FakeHub(existing_files))
        return hubs[-1]
    yield make
    for hub in hubs:
        hub.close()


TOKEN = 'hf_testTOKEN0123456789'


def test_push_sends_export_files_and_commit_message(exported, fake_hub, monkeypatch):
    folder, _ = exported
    hub = fake_hub()
    monkeypatch.setenv('HF_TOKEN', TOKEN)
    result = push_folder(folder, 'org/vit-rspc', commit_message='Add RSPC weights', private=True,
                         endpoint=hub.endpoint)
    (created,) = hub.created
    assert (created['organization'], created['name'], created['visibility']) == ('org', 'vit-rspc', 'private')
    (commit,) = hub.commits
    assert commit['repo_id'] == 'org/vit-rspc' and commit['revision'] == 'main'
    assert commit['header']['summary'] == 'Add RSPC weights'
    assert commit['files'] == {name: (folder / name).read_bytes() for name in EXPORT_FILES}
    assert all(auth == f'Bearer {TOKEN}' for _, _, auth in hub.requests)
    assert result['commit_oid'] == 'c' * 40


def test_push_to_a_branch_or_as_pull_request(exported, fake_hub, monkeypatch):
    folder, _ = exported
    hub = fake_hub()
    monkeypatch.setenv('HF_TOKEN', TOKEN)
    push_folder(folder, 'org/vit-rspc', revision='v2', endpoint=hub.endpoint)
    assert hub.branches == ['org/vit-rspc:v2']
    assert hub.commits[-1]['revision'] == 'v2' and 'create_pr' not in hub.commits[-1]['query']
    result = push_folder(folder, 'org/vit-rspc', create_pr=True, endpoint=hub.endpoint)
    assert hub.commits[-1]['revision'] == 'main' and 'create_pr=1' in hub.commits[-1]['query']
    assert result['pr_url'].endswith('/org/vit-rspc/discussions/1')


def test_push_refuses_to_replace_an_existing_card(exported, fake_hub, monkeypatch):
    folder, _ = exported
    monkeypatch.setenv('HF_TOKEN', TOKEN)
    hub = fake_hub(existing_files={'README.md'})
    with pytest.raises(CardExistsError, match='--overwrite-card'):
        push_folder(folder, 'org/vit-rspc', endpoint=hub.endpoint)
    assert hub.commits == [] and hub.created == []  # refused before anything was created or sent

    push_folder(folder, 'org/vit-rspc', keep_card=True, endpoint=hub.endpoint)
    assert set(hub.commits[-1]['files']) == EXPORT_FILES - {'README.md'}
    push_folder(folder, 'org/vit-rspc', overwrite_card=True, endpoint=hub.endpoint)
    assert hub.commits[-1]['files']['README.md'] == (folder / 'README.md').read_bytes()


def test_push_refuses_weights_changed_since_export(exported, fake_hub, monkeypatch):
    folder, _ = exported
    monkeypatch.setenv('HF_TOKEN', TOKEN)
    hub = fake_hub()
    (folder / 'config.json').write_text('{}')
    with pytest.raises(ValueError, match='changed since the export'):
        push_folder(folder, 'org/vit-rspc', endpoint=hub.endpoint)
    assert hub.requests == []


def test_push_cli_dry_run_sends_nothing_and_never_prints_the_token(exported, monkeypatch, capsys):
    folder, _ = exported
    monkeypatch.setenv('HF_TOKEN', TOKEN)
    monkeypatch.setenv('HF_ENDPOINT', 'http://127.0.0.1:9')  # nothing listens there: any request would fail
    assert cli_main(['push', 'org/vit-rspc', '--folder', str(folder), '--dry-run', '--json']) == 0
    captured = capsys.readouterr()
    plan = json.loads(captured.out)
    assert plan['dry_run'] is True and plan['repo_id'] == 'org/vit-rspc'
    assert {f['path'] for f in plan['files']} == EXPORT_FILES
    assert TOKEN not in captured.out + captured.err
    assert not (folder / 'timm_rspc_push.json').exists()


def test_push_cli_exports_and_uploads_a_checkpoint(tmp_path, run_checkpoint, fake_hub, monkeypatch, capsys):
    hub = fake_hub()
    monkeypatch.setenv('HF_TOKEN', TOKEN)
    import timm_rspc.hub.push as push_module
    real_push_folder = push_module.push_folder
    monkeypatch.setattr(push_module, 'push_folder',
                        lambda *a, **kw: real_push_folder(*a, endpoint=hub.endpoint, **kw))
    assert cli_main(['push', 'org/vit-rspc', '--model', MODEL, '--checkpoint', str(run_checkpoint),
                     '--commit-message', 'First upload']) == 0
    captured = capsys.readouterr()
    assert 'Uploaded to org/vit-rspc@main' in captured.out and TOKEN not in captured.out + captured.err
    (commit,) = hub.commits
    assert commit['header']['summary'] == 'First upload' and set(commit['files']) == EXPORT_FILES
    uploaded = load_file_bytes(commit['files']['model.safetensors'])
    assert all(torch.equal(uploaded[k], v) for k, v in _tiny_model(0).state_dict().items())


def load_file_bytes(data):
    from safetensors.torch import load
    return load(data)


def test_push_without_token_fails_clearly(exported, monkeypatch, tmp_path):
    folder, _ = exported
    monkeypatch.delenv('HF_TOKEN', raising=False)
    monkeypatch.setenv('HF_HOME', str(tmp_path / 'empty_hf_home'))
    import huggingface_hub.constants as hf_constants
    monkeypatch.setattr(hf_constants, 'HF_TOKEN_PATH', str(tmp_path / 'empty_hf_home' / 'token'))
    monkeypatch.setattr(hf_constants, 'HF_STORED_TOKENS_PATH', str(tmp_path / 'empty_hf_home' / 'stored_tokens'))
    with pytest.raises(PermissionError, match='hf auth login'):
        push_folder(folder, 'org/vit-rspc', endpoint='http://127.0.0.1:9')


def test_push_with_a_token_but_no_network_is_one_line(exported, monkeypatch, capsys):
    """Nothing listens on port 9 of this machine: the Hub is unreachable, as without a network."""
    from timm_rspc.cli import main
    folder, _ = exported
    import huggingface_hub.constants as hf_constants
    monkeypatch.setenv('HF_TOKEN', 'hf_not_a_real_token')
    monkeypatch.setattr(hf_constants, 'ENDPOINT', 'http://127.0.0.1:9')  # what HF_ENDPOINT sets at import
    with pytest.raises(SystemExit) as exit_info:
        main(['push', 'org/vit-rspc', '--folder', str(folder)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'Could not reach the Hugging Face Hub (http://127.0.0.1:9)' in err
    assert 'org/vit-rspc' in err and 'hf_not_a_real_token' not in err


# ---------------------------------------------------------------------------------------------------- released


def test_released_weights_are_release_urls_one_tag_per_file():
    rspc, fan = RSPC_RELEASES, FAN_RELEASES + 'v1.0.0/'
    registered = [
        ('rvt_s_rspc.rspc_in1k', rspc + 'v1.0/rspc_rvt_small.pth.tar'),  # alias, registered first
        ('rvt_small_plus.rspc_in1k', rspc + 'v1.0/rspc_rvt_small.pth.tar'),
        ('rvt_small_plus.rspc_cifar10', rspc + 'v1.1/rspc_rvt_small_cifar10.pth.tar'),
        ('fan_tiny_8_p4_hybrid.in1k', fan + 'fan_hybrid_tiny.pth.tar'),
        ('rvt_small.untrained', ''),
        ('other.in1k', 'https://example.com/weights.pth'),
    ]
    names = [w.name for w in select_released(registered)]
    assert names == ['fan_tiny_8_p4_hybrid.in1k', 'rvt_small_plus.rspc_cifar10', 'rvt_small_plus.rspc_in1k']
    assert [w.name for w in select_released(registered, 'rvt_*')] == names[1:]
    (fan_weight,) = select_released(registered, 'fan*')
    assert fan_weight.filename == 'fan_hybrid_tiny.pth.tar' and not fan_weight.is_rspc


def test_export_all_released_reports_missing_files_and_skips_finished_ones(tmp_path, run_checkpoint):
    present = ReleasedWeight(f'{MODEL}.augreg_in21k_ft_in1k', RSPC_RELEASES + 'v1.0/rspc_tiny.pth.tar')
    absent = ReleasedWeight(f'{MODEL}.augreg_in21k', RSPC_RELEASES + 'v1.0/rspc_absent.pth.tar')
    downloads = tmp_path / 'downloads' / 'checkpoints'  # torch hub's cache layout is found too
    downloads.mkdir(parents=True)
    os.replace(run_checkpoint, downloads / present.filename)
    out = tmp_path / 'released'
    index = export_all_released(tmp_path / 'downloads', out, weights=[present, absent], hub_org='org')
    assert [row['name'] for row in index['exported']] == [present.name]
    assert index['missing'] == [{'name': absent.name, 'url': absent.url, 'filename': 'rspc_absent.pth.tar'}]
    assert json.loads((out / 'released_index.json').read_text()) == index
    folder = out / present.name
    assert {p.name for p in folder.iterdir()} == EXPORT_FILES
    assert f"'hf-hub:org/{present.name}'" in (folder / 'README.md').read_text()
    assert torch.equal(_logits(timm.create_model(f'local-dir:{folder}', pretrained=True)), _logits(_tiny_model(0)))

    again = export_all_released(tmp_path / 'downloads', out, weights=[present, absent])
    assert again['exported'] == [] and [row['name'] for row in again['skipped']] == [present.name]


def test_released_rvt_weight_exports_with_paper_card(tmp_path, monkeypatch):
    """The registry's own entry for RSPC-RVT-Ti: a release-format file in the authors' container -> Hub folder."""
    from timm_rspc.hub import released_weights
    from timm_rspc.models import release_info
    (weight,) = [w for w in released_weights('rvt_tiny_plus.rspc_in1k')]
    assert weight.url == RSPC_RELEASES + 'v1.0/rspc_rvt_tiny.pth.tar' and weight.is_rspc
    torch.manual_seed(0)
    source = timm.create_model('rvt_tiny_plus')
    downloads = tmp_path / 'downloads'
    downloads.mkdir()
    torch.save({'state_dict': source.state_dict(), 'state_dict_ema': {}, 'epoch': 299,
                'args': argparse.Namespace(model='rvt_tiny_plus', rspc=True)}, downloads / weight.filename)
    # the registry knows the release file's SHA-256 (here: of the stand-in), so the paper's results apply
    monkeypatch.setitem(release_info.RELEASE_SHA256, weight.filename, sha256_file(downloads / weight.filename))

    index = export_all_released(downloads, tmp_path / 'out', pattern='rvt_tiny_plus.rspc_in1k')
    assert [row['name'] for row in index['exported']] == ['rvt_tiny_plus.rspc_in1k'] and index['missing'] == []
    folder = tmp_path / 'out' / 'rvt_tiny_plus.rspc_in1k'
    card = (folder / 'README.md').read_text()
    assert '\nlicense: mit\n' in card and 'Towards Robust Vision Transformer' in card
    # RSPC vs the RVT-Ti* baseline, paper table, on the full sets
    assert '| ImageNet-C mCE (↓) | ImageNet-C, 15 corruptions x 5 severities | 55.7 | 57.0 |' in card
    assert 'on the full evaluation sets (ImageNet-1k val: 50,000 images;' in card
    assert f"timm.create_model('local-dir:{folder}', pretrained=True)" in card and 'import timm_rspc' in card
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == 'rvt_tiny_plus' and config['num_classes'] == 1000
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source.eval()(x), rtol=0, atol=0)


def test_export_puts_paper_results_only_on_the_released_file(tmp_path, monkeypatch):
    """A file under a release name whose SHA-256 is not the release's (or not recorded) gets no paper results."""
    from timm_rspc.hub.export import UnverifiedReleaseError
    from timm_rspc.models import release_info
    torch.manual_seed(0)
    downloads = tmp_path / 'downloads'
    downloads.mkdir()
    path = downloads / 'rspc_rvt_tiny.pth.tar'
    torch.save({'state_dict': timm.create_model('rvt_tiny_plus').state_dict()}, path)
    with pytest.raises(UnverifiedReleaseError, match=re.escape(
            "Not putting the paper's results in the card of 'rvt_tiny_plus.rspc_in1k': these weights are not "
            "confirmed to be the released file (no SHA-256 of the release file rspc_rvt_tiny.pth.tar is recorded")):
        export_model(tmp_path / 'a', 'rvt_tiny_plus.rspc_in1k', checkpoint=path)
    monkeypatch.setitem(release_info.RELEASE_SHA256, path.name, '0' * 64)  # the release is another file
    with pytest.raises(UnverifiedReleaseError, match=r'its SHA-256 [0-9a-f]{12}\.\.\. is not the release file'):
        export_model(tmp_path / 'b', 'rvt_tiny_plus.rspc_in1k', checkpoint=path)
    index = export_all_released(downloads, tmp_path / 'out', pattern='rvt_tiny_plus.rspc_in1k')
    assert index['exported'] == [] and [row['name'] for row in index['unverified']] == ['rvt_tiny_plus.rspc_in1k']
    results = tmp_path / 'bench.json'
    results.write_text(json.dumps({'results': {'imagenet_top1': 12.5}}))
    export_model(tmp_path / 'c', 'rvt_tiny_plus.rspc_in1k', checkpoint=path, results=str(results))
    card = (tmp_path / 'c' / 'README.md').read_text()
    assert '12.5' in card and '55.7' not in card  # own result; not the paper's ImageNet-C mCE of RSPC-RVT-Ti


# ------------------------------------------------------------------------------------- cards true for their folder


def _card_code(card):
    """The card's Python blocks: image classification (which defines ``model``) and embeddings."""
    blocks = re.findall(r'```python\n(.*?)```', card, flags=re.S)
    assert len(blocks) == 2, card
    return blocks


def _run_card_code(card, workdir, env=None):
    """Run the card's code as a user would (fresh interpreter, an ``image.jpg`` beside it); returns the weights of
    the model its first ``timm.create_model`` loaded."""
    from PIL import Image
    workdir.mkdir(exist_ok=True)
    Image.new('RGB', (40, 40), (200, 30, 60)).save(workdir / 'image.jpg')
    classify, embed = _card_code(card)
    code = classify + '\nimport sys\ntorch.save(model.state_dict(), sys.argv[1])\n' + embed
    out = workdir / 'weights.pt'
    proc = subprocess.run([sys.executable, '-c', code, str(out)], cwd=workdir, env=env or dict(os.environ),
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out)


def _bench_results(path):
    """A bench results.json of a 32-image 'ImageNet val' and a complete, 10-image-per-split ImageNet-C."""
    from timm_rspc.bench.reference import IMAGENET_C_CORRUPTIONS
    splits = {'imagenet/all': {'correct': 32, 'total': 32}}
    splits.update({f'imagenet_c/{c}/{s}': {'correct': 5, 'total': 10} for c in IMAGENET_C_CORRUPTIONS
                   for s in range(1, 6)})
    path.write_text(json.dumps({
        'results': {'imagenet_top1': 100.0, 'imagenet_c_mce': 24.486, 'imagenet_c_mce_no_noise': 24.04},
        'source': 'timm-rspc bench (ImageNet, ImageNet-C)', 'model': MODEL, 'splits': splits,
        'summary': {'imagenet': {'top1': 100.0, 'images': 32}, 'imagenet_c': {'mce': 24.486, 'relative_mce': 24.9507}},
    }))
    return path


def test_card_without_repo_id_loads_this_export(tmp_path, run_checkpoint, weights):
    """Before: the card said timm.create_model('vit_tiny_patch16_224', pretrained=True): timm's own weights."""
    folder = tmp_path / 'export'
    export_model(folder, MODEL, checkpoint=run_checkpoint, results=_bench_results(tmp_path / 'results.json'))
    card = (folder / 'README.md').read_text()
    assert f"timm.create_model('local-dir:{folder}', pretrained=True)" in card
    assert f"create_model('{MODEL}'" not in card
    assert 'import timm_rspc' not in card  # a timm architecture: nothing of this package is needed to load it
    loaded = _run_card_code(card, tmp_path / 'user')
    assert loaded.keys() == weights['plain'].keys()
    assert all(torch.equal(loaded[k], v) for k, v in weights['plain'].items())
    # every metric with its data set, image count and one decimal; the relative mCE bench measured is shown
    assert '| ImageNet-1k top-1 (↑) | ImageNet-1k val | 100.0 (32 of 50,000 images) |' in card
    assert ('| ImageNet-C mCE (↓) | ImageNet-C, 15 corruptions x 5 severities | '
            '24.5 (750 of 3,750,000 images) |') in card
    assert ('| ImageNet-C mCE w/o noise (↓) | ImageNet-C, 12 corruptions (no noise) x 5 severities | '
            '24.0 (600 of 3,000,000 images) |') in card
    assert ('| ImageNet-C relative mCE (↓) | ImageNet-C, 15 corruptions x 5 severities, and ImageNet-1k val | '
            '25.0 (782 of 3,800,000 images) |') in card
    assert '24.9507' not in card and '24.486' not in card


def test_card_of_a_package_model_imports_timm_rspc(tmp_path):
    """An RVT exported without --repo-id: the card's code registers the architecture and loads the folder."""
    torch.manual_seed(0)
    model = timm.create_model('rvt_tiny', num_classes=NUM_CLASSES).eval()
    checkpoint = tmp_path / 'rvt.pth.tar'
    torch.save({'state_dict': model.state_dict(), 'args': argparse.Namespace(model='rvt_tiny', num_classes=10)},
               checkpoint)
    folder = tmp_path / 'rvt export'  # a space in the path: the snippet quotes it
    export_model(folder, 'rvt_tiny', checkpoint=checkpoint)
    card = (folder / 'README.md').read_text()
    assert 'import timm_rspc  # registers' in card and f"'local-dir:{folder}'" in card
    loaded = _run_card_code(card, tmp_path / 'user')
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())


def test_card_with_repo_id_loads_the_hub_repository(tmp_path, exported):
    folder, _ = exported
    hf_home = tmp_path / 'hf_home'
    _lay_out_hub_cache(hf_home / 'hub', 'org/vit-rspc', folder)
    env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_OFFLINE='1', HF_HUB_DISABLE_TELEMETRY='1')
    env.pop('HF_HUB_CACHE', None)
    card = (folder / 'README.md').read_text()
    assert "'hf-hub:org/vit-rspc'" in card and 'local-dir:' not in card
    loaded = _run_card_code(card, tmp_path / 'user', env=env)
    assert all(torch.equal(loaded[k], v) for k, v in _tiny_model(0).state_dict().items())


def test_push_refuses_a_card_that_loads_something_else(tmp_path, run_checkpoint):
    folder = tmp_path / 'local'
    export_model(folder, MODEL, checkpoint=run_checkpoint)  # no repo id: the card loads local-dir:
    with pytest.raises(ValueError, match=re.escape(f"loads 'local-dir:{folder}', not 'hf-hub:org/vit-rspc'")):
        push_folder(folder, 'org/vit-rspc', dry_run=True)
    plan = push_folder(folder, 'org/vit-rspc', dry_run=True, keep_card=True)
    assert 'README.md' not in {f['path'] for f in plan['files']}


def test_push_dry_run_digests_are_of_the_files_as_they_are_now(exported, monkeypatch, capsys):
    """Before: after editing README.md the plan listed its new size beside the SHA-256 of the exported card."""
    folder, manifest = exported
    monkeypatch.setenv('HF_ENDPOINT', 'http://127.0.0.1:9')
    card = folder / 'README.md'
    card.write_text(card.read_text() + '\nEdited by hand.\n')
    assert cli_main(['push', 'org/vit-rspc', '--folder', str(folder), '--dry-run', '--json']) == 0
    files = {f['path']: f for f in json.loads(capsys.readouterr().out)['files']}
    assert files['README.md']['sha256'] == _sha256(card) != manifest['files']['README.md']['sha256']
    assert files['README.md']['size'] == card.stat().st_size and files['README.md']['changed_since_export']
    assert files['model.safetensors']['sha256'] == manifest['files']['model.safetensors']['sha256']
    assert not files['model.safetensors']['changed_since_export']
    assert cli_main(['push', 'org/vit-rspc', '--folder', str(folder), '--dry-run']) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if 'README.md' in l)
    assert f'{card.stat().st_size:,d} B  sha256 {_sha256(card)}  (edited since the export)' in line


@pytest.mark.parametrize('umask', [0o022, 0o077, 0o002])
def test_export_files_get_the_usual_file_mode(tmp_path, run_checkpoint, umask):
    """Before: model.safetensors was 0600 (safetensors' own mode) beside 0644 checkpoints (export and convert)."""
    old = os.umask(umask)
    try:
        (tmp_path / 'probe').write_text('')  # any file the user writes
        export_model(tmp_path / 'export', MODEL, checkpoint=run_checkpoint)
        convert_checkpoint(run_checkpoint, tmp_path / 'converted' / 'model.safetensors')
    finally:
        os.umask(old)
    expected = (tmp_path / 'probe').stat().st_mode & 0o777
    assert expected == 0o666 & ~umask
    assert {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / 'export').iterdir()} == {
        name: expected for name in EXPORT_FILES}
    assert {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / 'converted').iterdir()} == {
        'model.safetensors': expected, 'model.json': expected}


def test_ema_without_ema_weights_speaks_in_flags(tmp_path, weights, capsys):
    """Before: '... Load without use_ema.' (a Python argument) for `export --ema`."""
    checkpoint = tmp_path / 'bare.pth.tar'
    _write_container(checkpoint, 'ddp_prefixed', weights)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(['export', str(tmp_path / 'out'), '--model', MODEL, '--checkpoint', str(checkpoint), '--ema',
                  '--num-classes', str(NUM_CLASSES), '--model-kwargs'] + [f'{k}={v}' for k, v in MODEL_KWARGS.items()])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('timm-rspc export: error: ') and len(err.splitlines()) == 1
    assert err.endswith('has no EMA weights (no state_dict_ema / model_ema / module_ema; it holds state_dict): '
                        'drop --ema to use its non-EMA weights.')
    assert 'use_ema' not in err


def test_convert_reads_the_args_yaml_beside_a_checkpoint_as_bench_does(tmp_path, weights):
    """One model build for every command (models.build): a checkpoint without stored arguments takes the model and
    its build arguments from the args.yaml its run wrote beside it."""
    import yaml
    run = tmp_path / 'run'
    run.mkdir()
    torch.save({'state_dict': weights['plain']}, run / 'last.pth.tar')
    (run / 'args.yaml').write_text(yaml.safe_dump(dict(model=MODEL, num_classes=NUM_CLASSES,
                                                       model_kwargs=dict(MODEL_KWARGS))))
    record = convert_checkpoint(run / 'last.pth.tar', tmp_path / 'out.safetensors')
    assert record['model'] == MODEL and record['num_classes'] == NUM_CLASSES
    converted = load_file(str(tmp_path / 'out.safetensors'))
    assert all(torch.equal(converted[k], v) for k, v in weights['plain'].items())
