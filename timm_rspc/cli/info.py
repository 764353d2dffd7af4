"""``timm-rspc info``: versions, devices, and whether the Triton kernels are active (running their self-checks).

What to paste into a bug report, and the quick way to see whether a GPU gets the fused kernels: on each CUDA device it
runs every kernel's self-check (`timm_rspc.kernels.checks.self_check`, the one training runs on first use), so a
kernel the local compiler or driver rejects shows up here, with its reason, instead of as a warning in a training log.
"""
import argparse
import json
import os
import platform
from typing import Dict, List


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--json', action='store_true', help='print JSON instead of text')


def _version(module_name: str) -> str:
    import importlib
    try:
        return getattr(importlib.import_module(module_name), '__version__', 'unknown')
    except ImportError:
        return 'not installed'


def collect() -> Dict:
    """Versions, devices and the kernels' state per CUDA device (``inactive_reason`` says why none run)."""
    import torch

    import timm_rspc
    import timm_rspc.analysis.attention  # noqa: F401  (these three register the kernels' PyTorch references,
    import timm_rspc.method.alignment  # noqa: F401  which the self-checks compare against)
    import timm_rspc.method.corruption  # noqa: F401
    from timm_rspc.kernels import KERNELS, KERNELS_ENV, kernel_status, triton_available
    info = dict(versions=dict(python=platform.python_version(), torch=torch.__version__, timm=_version('timm'),
                              triton=_version('triton') if triton_available() else 'not installed',
                              timm_rspc=timm_rspc.__version__),
                cuda=torch.version.cuda, devices=[], kernels={}, inactive_reason=None)
    cuda_devices: List = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(index)
            info['devices'].append(dict(device=f'cuda:{index}', name=torch.cuda.get_device_name(index),
                                        capability=f'sm_{major}{minor}'))
            cuda_devices.append(torch.device('cuda', index))
    if os.environ.get(KERNELS_ENV, '1') == '0':
        info['inactive_reason'] = f'switched off by {KERNELS_ENV}=0'
    elif not triton_available():
        info['inactive_reason'] = 'Triton is not installed (pip install "timm-rspc[triton]")'
    elif not cuda_devices:
        info['inactive_reason'] = 'no CUDA device: the kernels run on CUDA only, the PyTorch path runs'
    else:
        for device in cuda_devices:
            info['kernels'][str(device)] = {name: kernel_status(name, device) or 'active (self-check passed)'
                                            for name in KERNELS}
    return info


def run(args: argparse.Namespace) -> int:
    """Exit status 1 if a kernel failed its self-check (its PyTorch path runs), else 0."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)  # a failed self-check is reported in the table below
        info = collect()
    failed = any(not state.startswith('active') for states in info['kernels'].values() for state in states.values())
    if args.json:
        print(json.dumps(info, indent=2))
        return int(failed)
    for name, version in info['versions'].items():
        print(f'{name:<10} {version}')
    print(f"{'cuda':<10} {info['cuda'] or 'none (CPU build of torch)'}")
    if not info['devices']:
        print('devices    cpu only')
    for device in info['devices']:
        print(f"device     {device['device']}: {device['name']} ({device['capability']})")
    if info['inactive_reason']:
        print(f"kernels    inactive: {info['inactive_reason']}")
    for device, states in info['kernels'].items():
        for name, state in states.items():
            print(f'kernel     {name} on {device}: {state}')
    return int(failed)
