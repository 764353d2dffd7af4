"""Where the released weights live, under which license, and the input normalisation of the CIFAR releases.

Shared by the model files' pretrained cfgs and by the hub tools that find and export released weights.
"""
RVT_ORIGIN = 'https://github.com/vtddggg/Robust-Vision-Transformer'  # RVT has no release of its own here

RSPC_RELEASES = 'https://github.com/guoyongcs/RSPC/releases/download/'
RSPC_ORIGIN = 'https://github.com/guoyongcs/RSPC'
RSPC_LICENSE = 'mit'  # the RSPC repository's LICENSE file (MIT); covers the RSPC-RVT weights released there

FAN_RELEASES = 'https://github.com/zhoudaquan/fully_attentional_network_ckpt/releases/download/'
FAN_ORIGIN = 'https://github.com/NVlabs/FAN'
# NVlabs/FAN: NVIDIA Source Code License-NC. Also applied to RSPC-FAN weights: their model code is NVIDIA's.
FAN_LICENSE = 'nvidia-source-code-license-nc'

RELEASE_PREFIXES = (RSPC_RELEASES, FAN_RELEASES)

# SHA-256 of the release files as published, by file name. Only a file whose hash is recorded here counts as the
# released weights (and gets the paper's results in an exported card). None is recorded yet: the release files were
# not reachable where this table was written; add a file's hash once it is checked against the authors' release.
RELEASE_SHA256 = {}

# Per-channel statistics of the CIFAR training sets, used by the authors' CIFAR pipelines.
CIFAR10_MEAN = (0.49139968, 0.48215827, 0.44653124)
CIFAR10_STD = (0.24703233, 0.24348505, 0.26158768)
CIFAR100_MEAN = (0.5070751592371323, 0.48654887331495095, 0.4409178433670343)
CIFAR100_STD = (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)
