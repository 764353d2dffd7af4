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


def test_one_run_at_a_time_per_folder_for_training_and_benchmarks(tmp_path):
    """The one folder claim (files.FolderLock) behind training runs and benchmark runs."""
    from timm_rspc.bench.run_folder import BenchmarkFolder
    from timm_rspc.files import FolderBusy, FolderLock
    first = BenchmarkFolder(str(tmp_path / 'bench'), {'model': 'm'})
    with pytest.raises(FileExistsError, match=r"is in use by another benchmark run \(PID \d+ on "):
        BenchmarkFolder(str(tmp_path / 'bench'), {'model': 'm'}, resume=True)
    with pytest.raises(FolderBusy):
        FolderLock(str(tmp_path / 'bench')).acquire()
    first.close()
    BenchmarkFolder(str(tmp_path / 'bench'), {'model': 'm'}, resume=True).close()  # free again
    foreign = tmp_path / 'photos'
    foreign.mkdir()
    (foreign / 'me.jpg').write_bytes(b'')
    with pytest.raises(FileExistsError, match='is not a benchmark run folder'):
        BenchmarkFolder(str(foreign), {'model': 'm'})
    assert os.listdir(foreign) == ['me.jpg']  # refused without writing into the user's folder
