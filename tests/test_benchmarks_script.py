"""The benchmark suite's smoke run never replaces the committed figures."""
import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_run_writes_elsewhere(tmp_path):
    committed = os.path.join(REPO_ROOT, 'benchmarks', 'RESULTS.md')
    before = open(committed).read()
    proc = subprocess.run([sys.executable, os.path.join(REPO_ROOT, 'benchmarks', 'run.py'), '--quick', '--only', 'sync'],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, TMPDIR=str(tmp_path)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = proc.stdout.strip().splitlines()[-1].split('wrote ', 1)[1]
    assert written.startswith(str(tmp_path)) and os.path.isfile(written)
    assert open(committed).read() == before


def test_demo_check_reads_readmes_table_and_flags_a_drift(tmp_path, capsys):
    sys.path.insert(0, os.path.join(REPO_ROOT, 'benchmarks'))
    try:
        import check_demo
    finally:
        sys.path.pop(0)
    quoted = check_demo.readme_rows()
    assert set(quoted) == {'baseline', 'RSPC'} and all(row.count('|') == 3 for row in quoted.values())
    drifted = 'x\n' + quoted['baseline'] + '\n' + quoted['RSPC'].replace('|', '| 0.1', 1) + '\n'
    assert check_demo.table_rows(drifted)['RSPC'] != quoted['RSPC']
    assert check_demo.table_rows(drifted)['baseline'] == quoted['baseline']
