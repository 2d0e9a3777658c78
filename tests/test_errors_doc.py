"""docs/errors.md's table of errors: every row run from the repository's root, its exit code
and its stderr line as the page shows them (``…`` standing for what depends on the machine),
and its JSON decoding recipe for file names checked against real names."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE = (ROOT / "docs" / "errors.md").read_text()
ROWS = re.findall(r"^\| `(bninspect [^`]*)` \| (\d) \| `(Error: [^`]*)` \|$", PAGE, re.M)


def test_the_page_has_its_examples():
    assert len(ROWS) >= 10


@pytest.mark.parametrize(("command", "code", "line"), ROWS)
def test_each_documented_error(server, command, code, line):
    """In a process of its own with bounded memory: some rows ask for petabytes."""
    result = server.run(shlex.split(command)[1:], ROOT, memory=1 << 30, timeout=30)
    assert (result["status"], result["code"], result["stdout"]) == ("exit", int(code), "")
    pattern = ".*".join(re.escape(part) for part in line.split("…"))
    assert re.fullmatch(pattern + "\n", result["stderr"]), result["stderr"]
    assert not (ROOT / "out").exists()


def test_the_documented_name_recipe(tmp_path):
    """The page's decoder gives back the bytes of names json_output escaped."""
    block = re.search(r"```python\n(.*?)```", PAGE, re.S).group(1)
    scope: dict = {}
    exec(block, scope)  # the page's own code
    from bninspect.render.json_output import _text

    for raw in (b"caf\xe9.npy", b"a\\b.npy", b"a\\xe9", "été\n.npy".encode(), b"\xff\\\xfe"):
        assert scope["name_bytes"](_text(raw.decode("utf-8", "surrogateescape"))) == raw
