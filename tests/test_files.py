"""The package's one way to write files: a failed write leaves the previous file and no temporary file."""
import csv
import hashlib
import os

import pytest

from timm_rspc.files import atomic_write, atomic_write_json, sha256_file, write_csv


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_partial(tmp_path):
    path = tmp_path / 'results.json'
    atomic_write_json(str(path), {'top1': 1.5})

    def dies_halfway(f):
        f.write(b'{"top1": ')
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(path), dies_halfway)
    assert path.read_text() == '{\n  "top1": 1.5\n}\n'
    assert os.listdir(tmp_path) == ['results.json']


def test_csv_rows_and_digest(tmp_path):
    path = write_csv(str(tmp_path / 'rows.csv'), [dict(model='a', top1=1.0), dict(model='b', top1=2.5)])
    assert list(csv.DictReader(open(path))) == [{'model': 'a', 'top1': '1.0'}, {'model': 'b', 'top1': '2.5'}]
    assert sha256_file(path) == hashlib.sha256(open(path, 'rb').read()).hexdigest()
