"""Speed of floatlab against its peers, side by side (same as ``floatlab bench speed``).

Run: ``nice -n 5 python benchmarks/speed.py [--size 16777216] [--reps 5]``. Prints a Markdown
table: elements/s and the ratio to ``x.clone()`` (fresh output) and to ``dst.copy_(x)``
(preallocated output; compare the ``floatlab out=`` row with it). Peers that are not installed
are listed as skipped (``pip install floatlab[peers]``).
"""

from __future__ import annotations

import argparse

from floatlab.bench.speed import CASES, HEADER, run_speed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2 ** 24)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--case", action="append", choices=list(CASES))
    ap.add_argument("--no-peers", action="store_true")
    a = ap.parse_args()
    print(HEADER)
    run_speed(size=a.size, reps=a.reps, cases=a.case, peers=not a.no_peers)


if __name__ == "__main__":
    main()
