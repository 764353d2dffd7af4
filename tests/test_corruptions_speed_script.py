"""benchmarks/corruptions_speed.py keeps running: its quick mode covers every corruption of the registry and writes
only its own block of a results file."""
import os
import subprocess
import sys

from timm_rspc.corruptions import CORRUPTIONS

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO_ROOT, 'benchmarks', 'corruptions_speed.py')
BEGIN, END = '<!-- corruptions_speed: begin -->', '<!-- corruptions_speed: end -->'


def run_quick(*extra):
    proc = subprocess.run([sys.executable, SCRIPT, '--quick', *extra], capture_output=True, text=True, timeout=600,
                          cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def table_rows(report: str, header: str):
    """{first cell: cells} of the markdown table under the line starting with ``header``."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header)) + 2
    rows = {}
    for line in lines[start:]:
        if not line.startswith('|'):
            break
        cells = [cell.strip() for cell in line.strip('|').split('|')]
        rows[cells[0]] = cells[1:]
    return rows


def test_quick_run_covers_the_registry_and_writes_only_its_block(tmp_path):
    committed = os.path.join(REPO_ROOT, 'benchmarks', 'RESULTS.md')
    before = open(committed).read()
    results = tmp_path / 'RESULTS.md'
    results.write_text(f'# Results\n\nkept above\n\n{BEGIN}\nstale\n{END}\n\nkept below\n')
    out = run_quick('--write', str(results))
    speed = table_rows(out, '| corruption | torch img/s')
    forward = table_rows(out, '| corruption | ms per batch')
    assert list(speed) == list(CORRUPTIONS) == list(forward)
    for name, (torch_rate, reference_rate, speedup) in speed.items():
        assert float(torch_rate) > 0
        if reference_rate == '-':   # a reference that cannot run here must say why
            assert f'- {name}: ' in out
        else:
            assert float(reference_rate) > 0 and speedup.endswith('x')
    assert all(float(ratio) > 0 and float(step) > 1 for _, ratio, step in forward.values())
    assert 'Median over the' in out and 'on-the-fly step / clean step' in out and 'load average' in out
    written = results.read_text()
    assert written.startswith('# Results\n\nkept above\n\n' + BEGIN) and written.endswith(f'{END}\n\nkept below\n')
    assert 'stale' not in written and written.count(BEGIN) == 1
    assert open(committed).read() == before
