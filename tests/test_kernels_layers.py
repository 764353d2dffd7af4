"""The kernels are the bottom layer (ARCHITECTURE.md): nothing under ``timm_rspc/kernels/`` imports the package above
it, and the PyTorch references that the self-checks and fallbacks need come down through `register_reference`.

The import rule is checked on the source (every ``import`` / ``from ... import``, at module level or inside a
function, relative ones resolved, and ``importlib.import_module`` / ``__import__`` with a literal or f-string name),
so a lazy import inside a function cannot slip through; a fresh interpreter then confirms that loading every kernel
module and listing every check case imports nothing of the layers above.
"""
import ast
import os
import subprocess
import sys
import types
import warnings

import pytest
import torch

import timm_rspc.kernels as kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS_DIR = os.path.join(ROOT, 'timm_rspc', 'kernels')
ALLOWED = 'timm_rspc.kernels'  # within the package, the kernels import only themselves


def _module_name(path, root):
    rel = os.path.relpath(path, root)[:-len('.py')].split(os.sep)
    return '.'.join(rel[:-1] if rel[-1] == '__init__' else rel)


def _imported_names(path, root=ROOT):
    """(line, module name) of every import in the file, relative imports resolved against its package."""
    module = _module_name(path, root)
    package = module if path.endswith('__init__.py') else module.rpartition('.')[0]
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')[:len(package.split('.')) - node.level + 1]
                name = '.'.join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            yield node.lineno, name
            for alias in node.names:  # `from timm_rspc import method` imports timm_rspc.method
                yield node.lineno, f'{name}.{alias.name}'
        elif isinstance(node, ast.Call) and node.args and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == 'import_module')
                or (isinstance(node.func, ast.Name) and node.func.id in ('import_module', '__import__'))):
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                yield node.lineno, arg.value
            elif isinstance(arg, ast.JoinedStr):  # the literal start of an f-string, e.g. f'timm_rspc.kernels.{k}'
                head = ''.join(part.value for part in arg.values[:1] if isinstance(part, ast.Constant))
                yield node.lineno, head.rstrip('.') or '<dynamic>'
            else:
                yield node.lineno, '<dynamic>'


def _kernel_files():
    return sorted(os.path.join(folder, name) for folder, _, names in os.walk(KERNELS_DIR) for name in names
                  if name.endswith('.py'))


def test_the_import_scan_sees_lazy_relative_and_dynamic_imports(tmp_path):
    """The scanner itself: what the layer rule must catch, wherever it is written."""
    package = tmp_path / 'timm_rspc' / 'kernels'
    package.mkdir(parents=True)
    source = package / 'sample.py'
    source.write_text('import importlib\n'
                      'def f():\n'
                      '    from timm_rspc.method.alignment import paired_mse\n'
                      '    from ..analysis import attention\n'
                      '    from .. import train\n'
                      "    importlib.import_module('timm_rspc.bench')\n"
                      "    importlib.import_module(f'timm_rspc.hub.{1}')\n")
    names = {name for _, name in _imported_names(str(source), str(tmp_path))}
    assert {'timm_rspc.method.alignment', 'timm_rspc.analysis', 'timm_rspc.train', 'timm_rspc.bench',
            'timm_rspc.hub'} <= names


def test_kernel_modules_import_no_higher_layer():
    files = _kernel_files()
    assert {'__init__.py', 'checks.py', 'patch_noise.py', 'paired_distance.py', 'attention_change.py'} <= {
        os.path.basename(path) for path in files}
    offending = [f'{os.path.relpath(path, ROOT)}:{line}: {name}' for path in files
                 for line, name in _imported_names(path)
                 if name == '<dynamic>' or (name.split('.')[0] == 'timm_rspc'
                                            and name != ALLOWED and not name.startswith(ALLOWED + '.'))]
    assert not offending, 'timm_rspc/kernels/ is the bottom layer; it imports:\n' + '\n'.join(offending)


def test_kernel_modules_and_their_cases_load_without_the_layers_above():
    """In a fresh interpreter: every kernel module and every check case (closures only, nothing runs) with nothing
    of method/, analysis/ or above loaded; the kernels say they are not used until their references come."""
    pytest.importorskip('triton')
    code = (
        'import sys, torch\n'
        'from timm_rspc.kernels import KERNELS, kernel_status\n'
        'from timm_rspc.kernels.checks import COMPILE_DTYPES, cases\n'
        "n = sum(len(list(cases(k, 'cpu', COMPILE_DTYPES))) for k in KERNELS)\n"
        "assert n > 0 and all(kernel_status(k, torch.device('cpu')).startswith('not used') for k in KERNELS)\n"
        "above = ('method', 'analysis', 'train', 'bench', 'hub', 'demo', 'cli')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[:2][-1] in above and m.startswith('timm_rspc.')))\n")
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == '[]', proc.stdout


def test_dispatching_modules_register_their_references():
    """Each kernel's references are the functions of the module that dispatches to it, registered at import."""
    from timm_rspc.analysis import attention
    from timm_rspc.method import alignment, corruption
    assert vars(kernels.references('paired_distance')) == {'paired_mse': alignment.paired_mse}
    assert vars(kernels.references('attention_change')) == {
        'attention_change_sums': attention.attention_change_sums}
    assert vars(kernels.references('patch_noise')) == {
        'draw_noise': corruption.draw_noise, 'patch_mask_to_pixels': corruption.patch_mask_to_pixels,
        'blend_noise': corruption.blend_noise}


def test_a_kernel_without_its_reference_is_not_used(monkeypatch):
    """Not checked, not warned, not remembered: once its reference is registered, it is checked as usual."""
    import timm_rspc.method.alignment  # noqa: F401  (registers paired_distance)
    registered = kernels.references('paired_distance')
    monkeypatch.setattr(kernels, '_STATUS', {})
    monkeypatch.setattr(kernels, '_WARNED', set())
    monkeypatch.delitem(kernels._REFERENCES, 'paired_distance')
    on_cuda = types.SimpleNamespace(is_cuda=True, device=torch.device('cpu'))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert not kernels.use_kernels(on_cuda, 'paired_distance')
        assert kernels.kernel_status('paired_distance', torch.device('cpu')).startswith('not used')
    assert kernels._STATUS == {}
    with pytest.raises(kernels.ReferenceMissing, match="'paired_distance'"):
        kernels.references('paired_distance')
    kernels.register_reference('paired_distance', **vars(registered))
    assert kernels.references('paired_distance').paired_mse is registered.paired_mse


def test_register_reference_takes_exactly_the_kernels_functions(monkeypatch):
    monkeypatch.setattr(kernels, '_REFERENCES', dict(kernels._REFERENCES))
    with pytest.raises(ValueError, match='Unknown kernel'):
        kernels.register_reference('paired_distances', paired_mse=len)
    with pytest.raises(TypeError, match="'patch_noise' replaces"):
        kernels.register_reference('patch_noise', blend_noise=len)
    with pytest.raises(ValueError, match='Unknown kernel'):
        kernels.kernel_status('attention', torch.device('cpu'))


def test_info_alone_sees_every_kernels_reference():
    """``timm-rspc info`` runs in a process that imported nothing else: on a GPU (simulated; the self-check itself
    stubbed) every kernel must get to its self-check, not stop at "reference not registered"."""
    code = (
        'import torch, timm_rspc.kernels.checks as checks\n'
        'torch.cuda.is_available = lambda: True\n'
        'torch.cuda.device_count = lambda: 1\n'
        'torch.cuda.get_device_capability = lambda index: (9, 0)\n'
        "torch.cuda.get_device_name = lambda index: 'H100'\n"
        'torch.cuda.is_current_stream_capturing = lambda: False\n'
        'checks.self_check = lambda kernel, device: None\n'
        'from timm_rspc.cli.info import collect\n'
        "print(sorted(collect()['kernels']['cuda:0'].values()))\n")
    env = dict(os.environ, OMP_NUM_THREADS='1', TIMM_RSPC_KERNELS='1')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == str(['active (self-check passed)'] * 3), proc.stdout
