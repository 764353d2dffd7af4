"""timm's own model test suite (``tests/test_models.py`` of the installed timm's sdist) on the package's models.

The sdist matching the installed timm version is fetched with pip into a cache on first use (nothing of timm's file is
committed), and its ``test_models.py`` is run here as timm runs it for its own models, with two changes made from
outside, in memory:

* every model list it parametrizes over (``list_models`` / ``list_pretrained``) is restricted to the models this
  package registers, so only those run (with all their pretrained tags where timm's test includes tags);
* the package's families are added to the filter lists timm keeps for its ViT-family models: ``NON_STD_FILTERS``
  (transformer feature layout, so ``test_model_default_cfgs_non_std`` instead of ``test_model_default_cfgs``, and
  ``forward_intermediates`` instead of the hook-based ``features_only``) and ``FEAT_INTER_FILTERS`` (modules with
  ``forward_intermediates`` / the ``getter`` feature wrapper).

Tests of timm's file that name timm's own models, or none, are not collected. Only the tests that download weights
are skipped. ``TIMM_RSPC_TEST_CACHE`` moves the cache; ``TIMM_SDIST`` points at a local ``timm-<version>.tar.gz``
(e.g. for an offline machine) instead of fetching it.

What runs by default fits CI's budget: every test on every architecture once (aliases such as ``rvt_s_rspc`` build
the same architecture as ``rvt_small_plus`` and are left out), the config test on every model name and pretrained
tag, and not ``test_prune_intermediate_layers_contract``, which timm's own CI leaves out as too slow (it prunes every
model at every block; 25 minutes here). ``TIMM_RSPC_MODEL_SUITE=full`` runs everything on every name.
"""
import ast
import fnmatch
import os
import sys
import tarfile
import warnings
from pathlib import Path

import pytest
import timm
from timm.models import model_entrypoint

import timm_rspc  # noqa: F401  (registers the models)
from sdists import cache_dir, fetch_sdist

# The package's families, as timm's filter lists name them: module name (FEAT_INTER_FILTERS) -> model-name
# pattern (NON_STD_FILTERS).
FAMILIES = {'rvt': 'rvt_*', 'fan': 'fan_*'}
# timm's tests that fetch weights from the network.
DOWNLOADS_WEIGHTS = {'test_model_inference', 'test_model_load_pretrained'}
FULL = os.environ.get('TIMM_RSPC_MODEL_SUITE') == 'full'
# Run on every model name and tag by default (cheap: meta device), and not by default (timm's CI skips it too).
EVERY_NAME = {'test_model_default_cfgs_non_std', 'test_model_load_pretrained'}
FULL_ONLY = {'test_prune_intermediate_layers_contract'}

PACKAGE_ARCHS = frozenset(
    name for name in timm.list_models() if model_entrypoint(name).__module__.startswith('timm_rspc.')
)





def timm_test_models_file() -> Path:
    """``tests/test_models.py`` of the installed timm version's sdist, extracted into the cache."""
    version = timm.__version__
    target = cache_dir() / f'timm-{version}' / 'test_models.py'
    if not target.is_file():
        member = f'timm-{version}/tests/test_models.py'
        with tarfile.open(fetch_sdist('timm', version, 'TIMM_SDIST')) as tar:
            source = tar.extractfile(member).read()
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f'{target.name}.partial-{os.getpid()}')
        partial.write_bytes(source)
        os.replace(partial, target)
    return target


def _package_only(list_fn):
    def restricted(*args, **kwargs):
        return [name for name in list_fn(*args, **kwargs) if name.split('.')[0] in PACKAGE_ARCHS]
    return restricted


def _after_statement(namespace: dict, node: ast.stmt) -> None:
    """Patch the partly executed module right after the statements that define what is patched."""
    if isinstance(node, ast.ImportFrom) and node.module == 'timm':
        for name in ('list_models', 'list_pretrained'):
            if name in namespace:
                namespace[name] = _package_only(namespace[name])
    targets = [t.id for t in getattr(node, 'targets', []) if isinstance(t, ast.Name)]
    if 'FEAT_INTER_FILTERS' in targets:
        namespace['FEAT_INTER_FILTERS'].extend(FAMILIES)
    if 'NON_STD_FILTERS' in targets:
        namespace['NON_STD_FILTERS'].extend(FAMILIES.values())


def load_timm_test_models(name: str = 'timm_test_models'):
    """Execute timm's test module one top-level statement at a time, patching it as the module docstring says."""
    path = timm_test_models_file()
    tree = ast.parse(path.read_text(), filename=str(path))
    module = type(sys)(name)
    module.__file__ = str(path)
    sys.modules[name] = module
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', pytest.PytestUnknownMarkWarning)  # timm's CI markers
        for node in tree.body:
            exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), 'exec'), module.__dict__)
            _after_statement(module.__dict__, node)
    return module


def _model_names(test) -> list:
    for mark in getattr(test, 'pytestmark', []):
        if mark.name == 'parametrize' and mark.args[0] == 'model_name':
            return list(mark.args[1])
    return []


def distinct_architectures(names) -> set:
    """One name per architecture: names whose models have the same parameter names and shapes are aliases."""
    seen, kept = set(), set()
    for name in sorted(names, key=lambda n: (n.endswith('_rspc'), n)):  # canonical names before the paper's aliases
        model = timm.create_model(name, device='meta')
        signature = tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())
        if signature not in seen:
            seen.add(signature)
            kept.add(name)
    return kept


def _only_models(test, keep):
    """``test`` parametrized over the model names in ``keep`` only."""
    marks = [m for m in test.pytestmark if not (m.name == 'parametrize' and m.args[0] == 'model_name')]
    test.pytestmark = marks + [pytest.mark.parametrize('model_name', [n for n in _model_names(test) if n in keep]).mark]
    return test


def _is_fixture(obj) -> bool:
    return type(obj).__name__ == 'FixtureFunctionDefinition' or hasattr(obj, '_pytestfixturefunction')


unmatched = [m for m in PACKAGE_ARCHS if not any(fnmatch.fnmatch(m, p) for p in FAMILIES.values())]
assert not unmatched, f'Models of a family missing from FAMILIES: {unmatched}'

timm_tests = load_timm_test_models()
ARCHITECTURES = PACKAGE_ARCHS if FULL else distinct_architectures(PACKAGE_ARCHS)
COLLECTED = {}
for _name, _obj in vars(timm_tests).items():
    if _is_fixture(_obj):
        globals()[_name] = _obj
    elif _name.startswith('test_') and callable(_obj):
        _names = _model_names(_obj)
        if not _names or not all(n.split('.')[0] in PACKAGE_ARCHS for n in _names):
            continue  # a test of timm's own models
        if _name in FULL_ONLY and not FULL:
            continue
        if _name not in EVERY_NAME:
            _obj = _only_models(_obj, ARCHITECTURES)
        if _name in DOWNLOADS_WEIGHTS:
            _obj = pytest.mark.skip(reason='downloads weights')(_obj)
        globals()[_name] = COLLECTED[_name] = _obj
