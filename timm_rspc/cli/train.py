"""``timm-rspc train``: timm's train.py flags plus the RSPC flags (see :mod:`timm_rspc.train`)."""
from typing import List


def main(argv: List[str]) -> int:
    from timm_rspc.train import main as train_main
    return train_main(argv, prog='timm-rspc train')
