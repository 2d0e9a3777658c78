"""Measure how close correct data-parallel results come to the allowances ``run --ranks``
judges them by (bninspect/distributed/bounds.py): many drawn batches (the test's draws, in
tests/test_distributed_bounds.py: seeds, shapes with 2-D few-per-rank among them, dtypes,
conditioning, momentum, uneven and empty ranks) run in real local ranks, and per check the
largest error / allowance over every place it covers (below 1: passes), by dtype.

Usage: .venv/bin/python scripts/distributed_bounds_sweep.py [--per-world 60] [--seed 1]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_distributed_bounds import run_cases  # noqa: E402

from bninspect.distributed.explain import build_explain_result  # noqa: E402
from bninspect.distributed.report import build_run_result  # noqa: E402


def _ratio(check) -> float:
    error, allowed = check.max_error, check.allowed
    if not isinstance(error, float) or error == 0:
        return 0.0
    return error / allowed if allowed else float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-world", type=int, default=60)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--worlds", default="2,3,4,5")
    args = parser.parse_args()
    worlds = tuple(int(w) for w in args.worlds.split(","))
    runs = run_cases(worlds, args.per_world, args.seed)
    by_dtype: dict[tuple[str, str], float] = defaultdict(float)
    by_offset: dict[tuple[str, str], float] = defaultdict(float)
    failed = []
    for case, run in runs:
        dtype = case["x"].dtype.name
        offset = f"{case['offset']:g}"
        result = build_run_result(run)
        explained = build_explain_result(run, case["index"])
        for check in (*result.checks, *explained.checks):
            ratio = _ratio(check)
            by_dtype[(check.name, dtype)] = max(by_dtype[(check.name, dtype)], ratio)
            by_offset[(check.name, offset)] = max(by_offset[(check.name, offset)], ratio)
            if not check.passed:
                failed.append(
                    f"{check.name}: {case['x'].shape} {dtype} offset {offset} {case['sizes']}"
                )
    print(f"{len(runs)} batches over {worlds} ranks; largest error / allowance per check")
    _table("by dtype", by_dtype, sorted({d for _, d in by_dtype}))
    _table("by offset of x", by_offset, sorted({o for _, o in by_offset}, key=float))
    print(f"failed: {len(failed)}")
    for line in failed[:20]:
        print("  " + line)


def _table(title: str, worst: dict[tuple[str, str], float], columns: list[str]) -> None:
    print(f"\n{title}:")
    print(f"{'check':44}" + "".join(f"{c:>9}" for c in columns))
    for name in dict.fromkeys(n for n, _ in worst):
        cells = "".join(
            f"{worst[(name, c)]:>9.3g}" if (name, c) in worst else f"{'-':>9}" for c in columns
        )
        print(f"{name[:43]:44}{cells}")


if __name__ == "__main__":
    main()
