"""Write the JSON Schema of every command's --json document, derived from its result object.

    python scripts/json_schemas.py          # (re)write bninspect/results/schemas/*.schema.json
    python scripts/json_schemas.py --check  # exit 1 if a file is missing or out of date

A renamed or removed field changes a schema in a way a reader's code notices: bump
SCHEMA_VERSION (bninspect/results/common.py) and list the change in docs/json.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bninspect.render.json_schema import RESULT_CLASSES, command_schema

SCHEMAS = Path(__file__).resolve().parent.parent / "bninspect" / "results" / "schemas"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if stale")
    check = parser.parse_args().check
    stale = []
    for command in RESULT_CLASSES:
        path = SCHEMAS / f"{command}.schema.json"
        text = json.dumps(command_schema(command), indent=2) + "\n"
        if not path.exists() or path.read_text() != text:
            stale.append(path.name)
            if not check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    if check and stale:
        stale_files = ", ".join(stale)
        print(f"out of date: {stale_files}; run python scripts/json_schemas.py", file=sys.stderr)
        sys.exit(1)
    if stale:
        names = ", ".join(stale)
        print(f"rewrote {len(stale)} of {len(RESULT_CLASSES)} schemas in {SCHEMAS}: {names}")
    else:
        print(f"current: {len(RESULT_CLASSES)} schemas in {SCHEMAS}")


if __name__ == "__main__":
    main()
