"""Re-run every `$ bninspect ...` example in README.md and docs/*.md; put its real output in place.

    python scripts/docs_examples.py                 # rewrite every page in place
    python scripts/docs_examples.py --check         # exit 1 naming each example that differs
    python scripts/docs_examples.py docs/check.md   # only these pages (either mode)

An example is a fenced block whose first line is `$ bninspect ...` (arguments only: no pipes or
redirections) and whose other lines are the command's output: stdout and stderr interleaved as
a terminal shows them, trailing spaces stripped. The exit code is not shown.

Each page runs in its own empty scratch folder holding a copy of the repository's samples/, and
its examples run in page order: a file an example writes (`--save-input x.npy`) is there for the
examples below it on the same page, and nothing else is. Pages run in parallel, one per CPU.
The terminal is 80 columns without colour (COLUMNS=80, NO_COLOR=1, TERM=dumb), the width the
tests hold the article's screens to (tests/test_article.py).

An example may show an excerpt. A block whose output starts with "..." resumes at the line that
began the old excerpt (the same line, or else one that starts with the same two words); one
whose output ends with "..." keeps as many lines as it showed; one that does both keeps that
many lines from there; "..." between lines joins such pieces.

--check compares each example's output with the page after normalizing what depends on the
machine rather than on bninspect, in both texts (NORMALIZATIONS below):
  - the torch version: "PyTorch 2.13.0+cpu" and "torch_version": "2.13.0+cpu";
  - in `explain --precision`, the CPU capability PyTorch dispatched to (DEFAULT, AVX2, AVX512, ...)
    and its thread count, "(...; AVX512 kernel, 2 threads)", with the line breaks the heading's
    length moves;
  - durations and rates ("0.31 s", "12 ms", "19.5 GB/s");
  - absolute paths of the repository and of the scratch folders.
Everything else must match character for character.

Some outputs depend on the machine beyond those labels, rightly: PyTorch's per-thread partial
sums for (N, C) and channels-last input depend on the thread count, and `explain --grad
--precision` emulates the backward only for the kernel it was measured against. Such an example
says what it needs on the line before its fence, `<!-- needs AVX512, 2 threads -->` (a CPU
capability as PyTorch names it, and/or a thread count); on a machine without it, the example is
not run, and both modes say so. Forced to AVX2 (ATEN_CPU_CAPABILITY=avx2) or one thread
(OMP_NUM_THREADS=1), every other example matches; a CPU without FMA (PyTorch's DEFAULT
capability) rounds `x * alpha + beta` twice, and the --precision examples show it.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# An example: an optional "<!-- needs AVX512, 2 threads -->" line, then the fenced block.
BLOCK = re.compile(
    r"^(<!-- needs ([^>\n]*) -->\n)?```\n(\$ bninspect [^\n]*)\n(.*?)^```$", re.S | re.M
)
MACHINE = "import torch; print(torch.backends.cpu.get_cpu_capability(), torch.get_num_threads())"
SCRATCH_PREFIX = "bninspect-docs-"
SHELL_SYNTAX = re.compile(r"[|<>;&`$]")
ENV = {"COLUMNS": "80", "NO_COLOR": "1", "TERM": "dumb", "PYTHONUNBUFFERED": "1"}


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


# (pattern, replacement, flags): what --check ignores, applied in order to both texts.
NORMALIZATIONS: list[tuple[str, str, int]] = [
    # explain --precision's heading: "PyTorch's arithmetic (<path>; AVX512 kernel, 2 threads)",
    # wrapped where its length puts the break; the capability and thread count are the machine's.
    (
        r"PyTorch's arithmetic \(([^()]*?);\s+[A-Z][A-Z0-9_]*\s+kernel,\s+\d+\s+threads\)",
        "PyTorch's arithmetic (\\1; <cpu capability> kernel, <threads> threads)",
        0,
    ),
    (r"PyTorch \d+\.\d+(\.\d+)?[^\s,;)]*", "PyTorch <version>", 0),
    (r'"torch_version": "[^"]*"', '"torch_version": "<version>"', 0),
    (r"\b\d+(\.\d+)?(e[-+]?\d+)? ?(ms|s|GB/s|MB/s)(?![\w/])", "<duration or rate>", 0),
    (r"(/[^\s/]+)*/" + SCRATCH_PREFIX + r"[^\s/]+", "<scratch>", 0),
]


def normalize(text: str) -> str:
    """The text with what depends on the machine replaced (see the module's docstring)."""
    text = text.replace(str(ROOT), "<repo>")
    # The precision heading is one logical line: rejoin it before matching, so a capability
    # name of another length, which moves rich's line break, compares equal.
    text = re.sub(
        r"PyTorch's arithmetic \([^()]*\)",
        lambda m: " ".join(m.group(0).split()),
        text,
    )
    for pattern, replacement, flags in NORMALIZATIONS:
        text = re.sub(pattern, replacement, text, flags=flags)
    return text


@dataclass
class Example:
    page: Path
    line: int  # of the `$ bninspect` line, from 1
    command: str
    shown: str  # the output as the page shows it
    needs: str = ""  # what the machine must have for the output to be this page's, if anything
    output: str = ""  # the output of this run, cut to the page's excerpt
    problem: str = ""  # why the output could not be cut to the excerpt
    skipped: str = ""  # what this machine lacks that the example needs: not compared here


def examples_of(page: Path, text: str) -> list[Example]:
    found = []
    for match in BLOCK.finditer(text):
        line = text.count("\n", 0, match.start()) + 2
        line += 1 if match.group(1) else 0
        found.append(Example(page, line, match.group(3), match.group(4), match.group(2) or ""))
    return found


def machine() -> tuple[str, int]:
    """The CPU capability PyTorch dispatches to here (AVX512, AVX2, DEFAULT, ...), its threads."""
    env = {k: v for k, v in os.environ.items() if k != "BNINSPECT_DEBUG"} | ENV
    done = subprocess.run(
        [sys.executable, "-c", MACHINE], env=env, capture_output=True, text=True, check=True
    )
    capability, threads = done.stdout.split()
    return capability, int(threads)


def unmet(needs: str, here: tuple[str, int]) -> str:
    """What of ``needs`` ("AVX512", "2 threads", comma-separated) this machine lacks, or ""."""
    capability, threads = here
    lacking = []
    for need in filter(None, (part.strip() for part in needs.split(","))):
        count = re.fullmatch(r"(\d+) threads?", need)
        if count and int(count.group(1)) != threads:
            lacking.append(f"{need} (this machine: {threads})")
        elif not count and need != capability:
            lacking.append(f"{need} (this machine: {capability})")
    return ", ".join(lacking)


def run(command: str, folder: Path) -> str:
    """The command's output, stdout and stderr interleaved as written, trailing spaces cut."""
    if SHELL_SYNTAX.search(command.removeprefix("$ ")):
        raise SystemExit(f"{command!r}: examples take arguments only (no pipes or redirections)")
    args = shlex.split(command.removeprefix("$ "))
    env = {k: v for k, v in os.environ.items() if k != "BNINSPECT_DEBUG"} | ENV
    done = subprocess.run(
        [sys.executable, "-m", "bninspect", *args[1:]],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return "\n".join(line.rstrip() for line in done.stdout.splitlines())


def excerpt(old: str, new: str) -> tuple[str, str]:
    """``new`` cut as ``old`` was cut; and a problem, if it cannot be.

    ``old``'s lines "..." split it into pieces. The first piece, unless "..." precedes it, is
    the output's first lines; every other piece resumes at the first line after the previous
    piece equal to the piece's first line, or else at the first that starts with the same two
    words (the line's numbers may have changed). A piece keeps as many
    lines as it had, but the last one, unless "..." follows it, runs to the end of the output.
    """
    old_lines, new_lines = old.rstrip("\n").splitlines(), new.splitlines()
    if "..." not in old_lines:
        return new, ""
    pieces: list[list[str]] = [[]]
    for line in old_lines:
        if line == "...":
            pieces.append([])
        else:
            pieces[-1].append(line)
    lead, trail = old_lines[0] == "...", old_lines[-1] == "..."
    pieces = [piece for piece in pieces if piece]
    if not pieces:
        return "...", ""
    cut: list[str] = ["..."] if lead else []
    position = 0
    for number, piece in enumerate(pieces):
        if number == 0 and not lead:
            start = 0
        else:
            anchor = piece[0].split()[:2]
            rest = range(position, len(new_lines))
            start = next((i for i in rest if new_lines[i] == piece[0]), None)
            if start is None:
                start = next((i for i in rest if new_lines[i].split()[:2] == anchor), None)
            if not anchor or start is None:
                return new, f"no line starting {' '.join(anchor)!r} in the output"
            if number > 0:
                cut.append("...")
        end = len(new_lines) if number == len(pieces) - 1 and not trail else start + len(piece)
        cut += new_lines[start:end]
        position = end
    if trail:
        cut.append("...")
    return "\n".join(cut), ""


def run_page(page: Path, here: tuple[str, int]) -> list[Example]:
    found = examples_of(page, page.read_text())
    if not found:
        return found
    with tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX) as scratch:
        folder = Path(scratch)
        shutil.copytree(ROOT / "samples", folder / "samples")  # a copy: examples may write
        for example in found:
            output = run(example.command, folder)  # always: later examples may need its files
            example.skipped = unmet(example.needs, here)
            if example.skipped:
                example.output = example.shown.rstrip("\n")
            else:
                example.output, example.problem = excerpt(example.shown, output)
    return found


def rewrite(page: Path, found: list[Example]) -> None:
    outputs = iter(found)

    def replace(match: re.Match) -> str:
        example = next(outputs)
        output = f"{example.output}\n" if example.output else ""
        return f"{match.group(1) or ''}```\n{example.command}\n{output}```"

    page.write_text(BLOCK.sub(replace, page.read_text()))


def differences(example: Example) -> list[str]:
    if example.skipped:
        return []
    shown, got = normalize(example.shown.rstrip("\n")), normalize(example.output)
    if shown == got and not example.problem:
        return []
    where = f"{example.page.relative_to(ROOT)}:{example.line}: {example.command}"
    lines = [f"{where}: {example.problem or 'output differs'}"]
    diff = difflib.unified_diff(
        shown.splitlines(), got.splitlines(), "page", "this run", n=1, lineterm=""
    )
    lines += [f"    {line}" for line in list(diff)[2:22]]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare, do not rewrite")
    parser.add_argument("pages", nargs="*", type=Path, help="default: README.md and docs/*.md")
    args = parser.parse_args()
    chosen = [p.resolve() for p in args.pages] or pages()
    # The pages with the most examples first, so the slowest does not start last.
    by_cost = sorted(chosen, key=lambda page: -len(examples_of(page, page.read_text())))
    here = machine()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        runs = pool.map(lambda page: run_page(page, here), by_cost)
        done = dict(zip(by_cost, runs, strict=True))
    results = {page: done[page] for page in chosen}
    count = sum(len(found) for found in results.values())
    skipped = [e for found in results.values() for e in found if e.skipped]
    for example in skipped:
        where = f"{example.page.relative_to(ROOT)}:{example.line}: {example.command}"
        print(f"{where}: not compared here: it needs {example.skipped}")
    if not args.check:
        for page, found in results.items():
            problems = [e for e in found if e.problem]
            for example in problems:
                print(f"{example.page.relative_to(ROOT)}:{example.line}: {example.problem}")
            if found and not problems:
                rewrite(page, found)
        print(f"{count - len(skipped)} examples re-run and rewritten in {len(chosen)} pages")
        return
    report = [line for found in results.values() for e in found for line in differences(e)]
    if report:
        print("\n".join(report))
        failed = sum(1 for line in report if not line.startswith("    "))
        print(f"{failed} of {count} examples differ from their pages")
        sys.exit(1)
    tail = f" ({len(skipped)} not compared: this machine lacks what they need)" if skipped else ""
    print(f"{count - len(skipped)} examples in {len(chosen)} pages match their output{tail}")


if __name__ == "__main__":
    main()
