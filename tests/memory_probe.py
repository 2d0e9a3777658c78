"""Run bninspect in this process (``python tests/memory_probe.py OUT ARGS...``), recording
what its one fit check estimated, the resident memory when it did, and the peak resident
memory (VmHWM) at the end, as JSON in OUT: tests/test_memory_estimate.py compares them."""

from __future__ import annotations

import json
import sys


def _status(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def main() -> None:
    out, args = sys.argv[1], sys.argv[2:]
    from bninspect.cli import process

    process.install()
    from bninspect.pytorch import inspection

    seen: dict[str, int] = {}
    check_fits = inspection.check_fits

    def spy(need: int, what: str, advice: str) -> None:
        seen.update(need=need, rss_at_check=_status("VmRSS"))
        check_fits(need, what, advice)

    inspection.check_fits = spy
    from bninspect.cli.main import app

    code = 0
    try:
        app(args, prog_name="bninspect")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    seen.update(peak=_status("VmHWM"), code=code)
    with open(out, "w") as f:
        json.dump(seen, f)
    sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()
