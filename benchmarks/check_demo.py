"""Does README's demo table still come out of the code? Compares a demo run with the table README quotes.

    python benchmarks/check_demo.py                      # runs `timm-rspc demo` (about 5 minutes on 2 CPU cores)
    python benchmarks/check_demo.py --demo-json output/demo/<run>/demo.json     # checks a finished run

The demo is deterministic for a given machine and thread count (README says which it quotes); floating-point sums in
another order (other thread counts, other CPUs) change the trained models and so the numbers. Exit status 1 and the
differing rows when the run's table differs from README's, 0 when every row is equal.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Dict

HERE = os.path.dirname(os.path.abspath(__file__))
README = os.path.join(os.path.dirname(HERE), 'README.md')
_ROW = re.compile(r'^(baseline|RSPC)\s+\|.*$')


def table_rows(text: str) -> Dict[str, str]:
    """The demo table's model rows (``baseline``, ``RSPC``) from a text: README or the demo's terminal table."""
    rows = {}
    for line in text.splitlines():
        match = _ROW.match(line.strip())
        if match and match.group(1) not in rows:
            rows[match.group(1)] = ' '.join(line.split())
    return rows


def readme_rows(path: str = README) -> Dict[str, str]:
    text = open(path).read()
    block = text[text.index('## The demo'):]  # its first code block is the table
    return table_rows(block[block.index('```'):block.index('```', block.index('```') + 3)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--demo-json', help="a finished run's demo.json (default: run the demo now)")
    args = parser.parse_args(argv)
    from timm_rspc.demo.report import format_table
    if args.demo_json:
        report = json.load(open(args.demo_json))
    else:
        output = tempfile.mkdtemp(prefix='timm-rspc-demo-check-')
        subprocess.run([sys.executable, '-m', 'timm_rspc.cli', 'demo', '--output', os.path.join(output, 'run')],
                       check=True)
        report = json.load(open(os.path.join(output, 'run', 'demo.json')))
    ran, quoted = table_rows(format_table(report)), readme_rows()
    differing = [name for name in quoted if ran.get(name) != quoted[name]]
    for name in differing:
        print(f'README : {quoted[name]}\nthis run: {ran.get(name)}')
    print('README demo table: ' + ('reproduced' if not differing else f'differs ({", ".join(differing)})'))
    return 1 if differing else 0


if __name__ == '__main__':
    sys.exit(main())
