"""Source distributions the tests read from the package registry (timm's own model tests, the ImageNet-C reference):
fetched once with pip into the test cache, never committed."""
import os
import subprocess
import sys
from pathlib import Path


def cache_dir() -> Path:
    """``$TIMM_RSPC_TEST_CACHE``, default ``~/.cache/timm-rspc/tests``."""
    default = Path(os.environ.get('XDG_CACHE_HOME', Path.home() / '.cache')) / 'timm-rspc' / 'tests'
    return Path(os.environ.get('TIMM_RSPC_TEST_CACHE', default))


class SdistUnavailable(RuntimeError):
    """Neither the local file named by the environment variable, nor a cached copy, nor pip could provide it."""


def fetch_sdist(package: str, version: str, env_var: str) -> Path:
    """``$<env_var>`` (a local sdist, for offline machines), else the cached sdist, else downloaded with pip."""
    if os.environ.get(env_var):
        return Path(os.environ[env_var])
    cache = cache_dir()
    sdist = cache / f'{package}-{version}.tar.gz'
    if not sdist.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--no-binary', ':all:', '--quiet',
               f'{package}=={version}', '-d', str(cache)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not sdist.is_file():
            raise SdistUnavailable(
                f'{package} {version} is not cached at {sdist} and `{" ".join(cmd)}` failed (package registry '
                f'unreachable?): {done.stderr.strip()[-300:]} Offline: set {env_var} to a local {sdist.name}.')
    return sdist
