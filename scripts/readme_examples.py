"""Re-run every `$ bninspect ...` example in README.md and put its real output in place.

    python scripts/readme_examples.py          # rewrite README.md
    python scripts/readme_examples.py --check  # exit 1 if any example differs

Runs each command in a scratch folder that holds the repository's samples/ and bench-data/ and
the example's `mine.npy` (the article's tensor normalized with the sample variance, the mistake
the README's check example shows), at 100 columns without colour. An example that shows an
excerpt keeps it: a block whose output starts with "..." resumes at the line that began the old
excerpt (matched by its first words), one that ends with "..." keeps as many leading lines.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCK = re.compile(r"```\n(\$ bninspect [^\n]*)\n(.*?)```", re.S)


def write_mine(folder: Path) -> None:
    """The article's tensor through a batch norm that normalizes with var(ddof=1)."""
    x = np.load(ROOT / "samples" / "article.npy").astype(np.float64)
    weight = np.array([0.5653, 0.0322], dtype=np.float32).astype(np.float64)
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3), ddof=1, keepdims=True)
    y = (x - mean) / np.sqrt(var + 1e-5) * weight.reshape(1, -1, 1, 1)
    np.save(folder / "mine.npy", y.astype(np.float32))


def run(command: str, folder: Path) -> str:
    args = shlex.split(command.removeprefix("$ "))
    env = {**os.environ, "COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"}
    exe = [sys.executable, "-m", "bninspect", *args[1:]]
    done = subprocess.run(exe, cwd=folder, env=env, capture_output=True, text=True)
    return "\n".join(line.rstrip() for line in done.stdout.splitlines())


def excerpt(old: str, new: str) -> str:
    old_lines, new_lines = old.rstrip("\n").splitlines(), new.splitlines()
    if old_lines and old_lines[0] == "...":
        anchor = " ".join(old_lines[1].split()[:2])
        start = next((i for i, line in enumerate(new_lines) if line.startswith(anchor)), None)
        if start is None:
            raise SystemExit(f"no line starting {anchor!r} in the new output")
        return "\n".join(["...", *new_lines[start:]])
    if old_lines and old_lines[-1] == "...":
        return "\n".join([*new_lines[: len(old_lines) - 1], "..."])
    return new


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true")
    check = parser.parse_args().check
    text = README.read_text()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for name in ("samples", "bench-data"):
            if (ROOT / name).exists():
                (folder / name).symlink_to(ROOT / name)
        write_mine(folder)

        def replace(match: re.Match) -> str:
            command, old = match.group(1), match.group(2)
            return f"```\n{command}\n{excerpt(old, run(command, folder))}\n```"

        updated = BLOCK.sub(replace, text)
    if check:
        sys.exit(0 if updated == text else 1)
    README.write_text(updated)


if __name__ == "__main__":
    main()
