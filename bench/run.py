#!/usr/bin/env python3
"""Run every benchmark and print one JSON document: {"headline": …, "workers": …}.

Each benchmark runs as its own process (so one cannot warm caches or leave threads for the
next); their progress goes to stderr, their JSON is collected here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = {
    "headline": "headline.py",
    "workers": "workers.py",
    "stores": "stores.py",
    "api": "api.py",
    # The fleet at scale (issue 16); each default run stays under 10 minutes on 2 cores, the
    # full sizes are flags: soak.py --imports 10000, scale.py --virtual-gib 1,16,100.
    "soak": "soak.py",
    "scale": "scale.py",
    "catalog": "catalog.py",
}


def main(argv: list[str]) -> int:
    """Run the benchmarks named in argv (all by default)."""
    names = argv or list(BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        print(
            f"bench: unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}",
            file=sys.stderr,
        )
        return 2
    results = {}
    for name in names:
        proc = subprocess.run(
            [sys.executable, str(HERE / BENCHMARKS[name])],
            stdout=subprocess.PIPE,
            check=False,
        )
        if proc.returncode != 0:
            print(f"bench: {name} exited {proc.returncode}", file=sys.stderr)
            return proc.returncode
        results[name] = json.loads(proc.stdout)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
