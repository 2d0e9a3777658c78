"""What every inspecting command does around its own work: prepare and run the inspection under a
progress bar, save the files asked for, and print the result as tables or JSON."""

from __future__ import annotations

import sys
from typing import Any

from bninspect.input.layout import user_indices
from bninspect.input.request import InspectRequest
from bninspect.render.progress_bar import progress_bar


def emit(result: Any, as_json: bool, detail: str = "normal", **view_options: Any) -> None:
    """Print the result: JSON alone on stdout, or the verdict and tables at ``detail`` ("quiet",
    "normal" or "verbose"); notices go to stderr."""
    notices = [
        notice
        for part in ("input", "settings", "output")
        for notice in getattr(getattr(result, part, None), "notices", ())
    ]
    for notice in notices:
        print(f"Notice: {notice}", file=sys.stderr)
    if as_json:
        from bninspect.render.json_output import to_json

        sys.stdout.write(to_json(result) + "\n")
        return
    from bninspect.render.screen import print_result

    print_result(result, detail, **view_options)


def inspect(request: InspectRequest, as_json: bool, report, before=None, compare_only=False):
    """Prepare (every check, with ``before(planned_input, settings)`` checking and loading
    what else the command needs, all before torch loads), run, save files;
    ``report(inspection, what_before_gave, progress)`` builds the result, under the same
    progress bar, and its element indices go back to the user's layout. ``compare_only``: the
    report needs PyTorch's output only as its errors
    (see inspection.prepare)."""
    # numpy and the kernels load here, not at start-up: --help and usage errors stay instant.
    from bninspect.pytorch.inspection import prepare, run_inspection, save_outputs

    prepared = prepare(request, before, compare_only)
    with progress_bar(as_json) as progress:
        inspection = run_inspection(prepared, progress)
        result = report(inspection, prepared.extra, progress)
    info = inspection.tensor.info  # results index the core's (N, C, ...): give the user's
    result = user_indices(result, info.channel_axis, len(info.shape))
    for message in save_outputs(request, inspection):
        print(message, file=sys.stderr)
    return result
