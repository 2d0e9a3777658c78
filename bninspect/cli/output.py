"""What every inspecting command does around its own work: prepare and run the inspection under a
progress bar, save the files asked for, and print the result as tables or JSON.

Only the result goes to stdout (process.write_result), as one write that is checked; notices
and messages go to stderr (process.say), one printable line each.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bninspect.cli.process import require_stdout, say, write_result
from bninspect.input.layout import user_indices
from bninspect.input.request import InspectRequest
from bninspect.render.progress_bar import progress_bar
from bninspect.text import printable


def emit(result: Any, as_json: bool, detail: str = "normal", **view_options: Any) -> None:
    """Print the result: JSON alone on stdout, or the verdict and tables at ``detail`` ("quiet",
    "normal" or "verbose"); notices go to stderr."""
    notices = [
        notice
        for part in ("input", "settings", "output")
        for notice in getattr(getattr(result, part, None), "notices", ())
    ]
    for notice in notices:
        say(f"Notice: {notice}")
    if as_json:
        from bninspect.render.json_output import to_json

        write_result(to_json(result) + "\n")
        return
    from bninspect.render.screen import format_result

    # The result's text made printable first: a file name must not move the cursor, colour
    # the terminal or break a line.
    write_result(format_result(printable_result(result), detail, **view_options))


def printable_result(value: Any) -> Any:
    """A copy of a result object with every string made printable (text.printable), for
    tables; the same object when nothing needs escaping (the usual case)."""
    if isinstance(value, str):
        return printable(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {}
        for f in dataclasses.fields(value):
            if not f.init:
                continue
            old = getattr(value, f.name)
            new = printable_result(old)
            if new is not old:
                changes[f.name] = new
        return dataclasses.replace(value, **changes) if changes else value
    if isinstance(value, (list, tuple)):
        items = [printable_result(v) for v in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return type(value)(items) if isinstance(value, list) else tuple(items)
    if isinstance(value, dict):
        changed = {printable_result(k): printable_result(v) for k, v in value.items()}
        if all(
            a is b and c is d
            for (a, c), (b, d) in zip(changed.items(), value.items(), strict=True)
        ):
            return value
        return changed
    return value


def inspect(
    request: InspectRequest,
    as_json: bool,
    report,
    before=None,
    compare_only: bool = False,
    reads: tuple[Path, ...] = (),
    extra_need: Callable | None = None,
    need_words: tuple[str, str] | None = None,
):
    """Prepare (every check, with ``before(planned_input, settings)`` checking and loading
    what else the command needs, all before torch loads), run, save files;
    ``report(inspection, what_before_gave, progress)`` builds the result, under the same
    progress bar, and its element indices go back to the user's layout. ``compare_only``: the
    report needs PyTorch's output only as its errors (see inspection.prepare); ``reads``: the
    command's own input files, which no save path may name; ``extra_need``, ``need_words``:
    the memory the command's own work needs, and how a refusal words it (inspection.prepare)."""
    require_stdout()  # before any work: a result with nowhere to go is not worth computing
    # numpy and the kernels load here, not at start-up: --help and usage errors stay instant.
    from bninspect.pytorch.inspection import prepare, run_inspection, save_outputs

    prepared = prepare(request, before, compare_only, reads, extra_need, need_words)
    with progress_bar(as_json) as progress:
        inspection = run_inspection(prepared, progress)
        result = report(inspection, prepared.extra, progress)
    # A memory-mapped input (--stats-only) was read until now: it must not have changed.
    inspection.tensor.check_unchanged()
    info = inspection.tensor.info  # results index the core's (N, C, ...): give the user's
    result = user_indices(result, info.channel_axis, len(info.shape))
    for message in save_outputs(request, inspection):
        say(message)
    return result
