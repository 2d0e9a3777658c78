"""The docs as a reader meets them: a short README, links that lead somewhere, the set-up line CI
runs, and the example checker's normalizations (scripts/docs_examples.py)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) outside code; the target up to whitespace or ")", an optional "title" after.
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE = re.compile(r"`[^`\n]*`")


def load_script():
    spec = importlib.util.spec_from_file_location(
        "docs_examples", ROOT / "scripts" / "docs_examples.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def prose(text: str) -> str:
    return CODE.sub("", FENCE.sub("", text))


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+)$", FENCE.sub("", text), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        candidate, n = slug, 1
        while candidate in found:
            candidate, n = f"{slug}-{n}", n + 1
        found.add(candidate)
    return found


def test_the_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail to docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(page):
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if resolved.suffix != ".md":
            fragment = ""  # anchors are checked in Markdown pages only
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif fragment and fragment not in anchors(resolved.read_text()):
            broken.append(f"{target}: no heading #{fragment} in {resolved.name}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_link_checker_sees_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A page\n\n[there](missing.md), [here](#a-page), [bad](#nowhere)\n")
    targets = LINK.findall(prose(page.read_text()))
    assert targets == ["missing.md", "#a-page", "#nowhere"]
    assert anchors(page.read_text()) == {"a-page"}


def test_ci_runs_the_docs_examples_check_from_the_readme():
    """.ci/run reads the line after the marker's fence: it must check the examples."""
    lines = (ROOT / "README.md").read_text().splitlines()
    marker = lines.index("<!-- test-command -->")
    assert lines[marker + 1].startswith("```")
    command = lines[marker + 2]
    assert "scripts/docs_examples.py --check" in command
    assert command.index("lint-imports") < command.index("docs_examples") < command.index("pytest")


def test_every_page_has_examples_the_script_finds():
    script = load_script()
    counts = {page.name: len(script.examples_of(page, page.read_text())) for page in PAGES}
    assert counts["README.md"] == 5, counts
    assert all(counts[name] for name in ("worked-example.md", "check.md", "precision.md")), counts


AVX512 = """\
PyTorch's arithmetic (contiguous: sequential float64 sums; AVX512 kernel, 2
threads)
          how PyTorch"""
AVX2 = """\
PyTorch's arithmetic (contiguous: sequential float64 sums; AVX2 kernel, 4 threads)
          how PyTorch"""


def test_normalizing_forgives_the_machine_and_nothing_else():
    normalize = load_script().normalize
    assert normalize(AVX512) == normalize(AVX2)
    assert normalize("PyTorch 2.13.0+cpu, beside") == normalize("PyTorch 2.5.1, beside")
    assert normalize("took 0.31 s at 19.5 GB/s") == normalize("took 1.2 s at 8 GB/s")
    assert normalize(f"input {ROOT}/x.npy") == "input <repo>/x.npy"
    # What bninspect computes is not forgiven:
    assert normalize(AVX512.replace("sequential", "pairwise")) != normalize(AVX2)
    assert normalize("0.4906 ULP") != normalize("0.4907 ULP")
    assert normalize("8 steps of 20 samples") == "8 steps of 20 samples"


def test_excerpts_resume_at_their_anchor():
    excerpt = load_script().excerpt
    output = "\n".join(f"line {i} of the output" for i in range(10))
    cut, problem = excerpt("line 0\nline 1\n...", output)
    assert cut == "line 0 of the output\nline 1 of the output\n..." and not problem
    cut, problem = excerpt("...\nline 7 old text", output)
    assert cut == "...\nline 7 of the output\nline 8 of the output\nline 9 of the output"
    cut, problem = excerpt("line 0\n...\nline 5 x\n...", output)
    assert cut == "line 0 of the output\n...\nline 5 of the output\n..." and not problem
    assert excerpt("...\nno such line", output)[1]


def test_an_example_says_what_machine_its_output_needs(tmp_path):
    script = load_script()
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- needs AVX512, 2 threads -->\n```\n$ bninspect run -q\nout\n```\n\n"
        "```\n$ bninspect conventions -q\nmore\n```\n"
    )
    first, second = script.examples_of(page, page.read_text())
    assert (first.needs, first.line, first.shown) == ("AVX512, 2 threads", 3, "out\n")
    assert (second.needs, second.line) == ("", 8)
    assert script.unmet("AVX512, 2 threads", ("AVX512", 2)) == ""
    assert script.unmet("AVX512, 2 threads", ("AVX2", 2)) == "AVX512 (this machine: AVX2)"
    assert script.unmet("2 threads", ("AVX512", 4)) == "2 threads (this machine: 4)"
    assert script.unmet("", ("DEFAULT", 1)) == ""
