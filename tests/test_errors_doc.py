"""docs/errors.md's recipe for getting a file name's bytes back from the JSON, run on names
json_output escaped (the page's `$ bninspect` examples are re-run by scripts/docs_examples.py)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = (ROOT / "docs" / "errors.md").read_text()


def test_the_documented_name_recipe():
    """The page's decoder gives back the bytes of names json_output escaped."""
    block = re.search(r"```python\n(.*?)```", PAGE, re.S).group(1)
    scope: dict = {}
    exec(block, scope)  # the page's own code
    from bninspect.render.json_output import _text

    for raw in (b"caf\xe9.npy", b"a\\b.npy", b"a\\xe9", "été\n.npy".encode(), b"\xff\\\xfe"):
        assert scope["name_bytes"](_text(raw.decode("utf-8", "surrogateescape"))) == raw
