"""``bninspect model`` for people: the verdict, the worst layers, then what was asked for (every
layer with --all, one in full with --layer, population statistics, folding, the dump). Formats
numbers; never computes one. Tables fit 80 columns."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.text import Text

from bninspect.render.cells import grid, labelled
from bninspect.results.common import Undefined
from bninspect.results.model import LayerReport, ModelResult
from bninspect.text import number

SUMMARY_ROWS = 8  # the worst layers shown without --all
DELAY_SECONDS = 1.0


def _fmt(value: object, digits: int = 3) -> str:
    if isinstance(value, Undefined) or value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        text = number(value) if digits >= 5 else f"{value:.{digits}g}"
        return {"nan": "NaN", "inf": "inf", "-inf": "-inf"}.get(text, text)
    return str(value)


def _severity(layer: LayerReport) -> tuple:
    gap = layer.max_gap if not isinstance(layer.max_gap, Undefined) else layer.max_own_gap
    value = gap if isinstance(gap, float) else -1.0
    if "nan-buffers" in layer.flags:
        value = float("inf")
    return (-value, -len(layer.flags), layer.index)


NAME_WIDTH = 28  # the grid keeps 3 spaces between columns: a 7-column layer table then fits 80
FOLD_NAME_WIDTH = 16  # the fold table holds two names beside five short columns


def _wrap_name(name: str, width: int = NAME_WIDTH) -> str:
    """A long dotted name over lines broken after a dot, so each piece stays whole."""
    lines, line = [], ""
    for piece in name.split("."):
        candidate = f"{line}.{piece}" if line else piece
        if line and len(candidate) > width:
            lines.append(line + ".")
            line = piece
        else:
            line = candidate
    return "\n".join([*lines, line])


def _table(title: str, headers: list[str], rows: list[list[str]], left=(1,)) -> RenderableType:
    """The house grid (cells.grid): its title at the screen's width, numbers never cut."""
    return grid(title, headers, rows, left=left)


def _label(layer: LayerReport) -> str:
    return _wrap_name(layer.name + (f" #{layer.call}" if layer.call > 1 else ""))


def _weights_rows(layers) -> list[list[str]]:
    """--weights alone: what a state_dict holds, no batch."""
    return [
        [
            str(layer.index + 1),
            _label(layer),
            str(layer.channels),
            "yes" if layer.affine else "no",
            _fmt(layer.num_batches_tracked),
            " ".join(layer.flags) or "-",
        ]
        for layer in layers
    ]


WEIGHTS_HEADERS = ["#", "batch norm", "channels", "affine", "batches", "flags"]


def _layer_rows(layers) -> list[list[str]]:
    return [
        [
            str(layer.index + 1),
            _label(layer),
            _fmt(layer.max_gap),
            _fmt(layer.max_own_gap),
            _fmt(layer.max_mean_drift),
            _fmt(layer.worst_var_ratio),
            " ".join(layer.flags) or "-",
        ]
        for layer in layers
    ]


LAYER_HEADERS = ["#", "batch norm", "gap", "own", "drift", "var x", "flags"]


def _header(result: ModelResult, width: int = 80) -> Text:
    s = result.source
    lines = []
    if s.program is not None:
        lines.append(labelled("program", f"{s.program} (torch.export), {s.dtype}", width))
    elif s.model is not None:
        kwargs = ", ".join(f"{k}={v}" for k, v in s.kwargs.items())
        lines.append(
            labelled("model", f"{s.model}({kwargs}), {s.dtype}, {s.mode} mode as given", width)
        )
    weights_alone = s.model is None and s.program is None
    if s.weights is not None:
        what = (
            "a state_dict alone: buffers and parameters, no network run"
            if weights_alone
            else "loaded into the model"
        )
        lines.append(labelled("weights", f"{s.weights}: {s.loaded_tensors} tensors, {what}", width))
    lines += [labelled("", note, width) for note in s.checkpoint]
    b = result.batches
    if not isinstance(b, Undefined):
        shape = "x".join(map(str, b.shape))
        if b.source == "generated":
            what = f"generated standard normal, seed {b.seed}"
        else:
            what = ", ".join(b.paths[:3]) + (" ..." if len(b.paths) > 3 else "")
        more = f"; {b.batches} batches" if b.batches > 1 else ""
        lines.append(labelled("batch", f"{shape} {b.dtype}: {what}{more}", width))
    count = len(result.layers)
    layers = (
        f"{count} batch norm{'s' if count != 1 else ''} in the state_dict (each a running_mean "
        "with its running_var)"
        if weights_alone
        else f"{count} batch-norm call{'s' if count != 1 else ''} in one forward"
        + (f"; not batch norm: {', '.join(s.other_norms[:4])}" if s.other_norms else "")
        + (f" and {len(s.other_norms) - 4} more" if len(s.other_norms) > 4 else "")
    )
    lines.append(labelled("layers", layers, width))
    return Text("\n".join(lines))


def _explain_columns(result: ModelResult) -> Text:
    return Text(
        f"gap: max |y_train - y_eval| / output scale, the whole network in each mode; own: "
        f"this layer alone on the same input; drift: max |batch mean - running_mean| in "
        f"running std; var x: (batch var + eps) / (running_var + eps) furthest from 1. "
        f"Threshold {result.gap_threshold:g}.",
        style="dim",
    )


def _population(result: ModelResult, layers) -> RenderableType | None:
    shown = [layer for layer in layers if not isinstance(layer.population, Undefined)]
    if not shown:
        return None
    names = [c.name for c in shown[0].population.choices[1:]]
    rows = [
        [str(layer.index + 1), _label(layer)]
        + [_fmt(c.max_output_move) for c in layer.population.choices[1:]]
        for layer in shown
    ]
    p = shown[0].population
    title = (
        f"Population statistics over {p.batches} batches: how far each choice moves the "
        "output from the exact pooled one (RMS, in output std)"
    )
    return _table(title, ["#", "batch norm", *names], rows)


def _folds(result: ModelResult, layers, everything: bool) -> RenderableType | None:
    if isinstance(result.pairing, Undefined):
        return None
    pairs = [layer for layer in layers if not isinstance(layer.fold, Undefined)]
    found = [(layer, d) for layer in pairs for d in layer.fold.dtypes]

    def worst_first(pair) -> float:
        folded = pair[1].folded_ulp_error_at_scale
        if isinstance(folded, Undefined):  # not measured: last
            return float("inf")
        return float("-inf") if folded != folded else -folded  # NaN: first

    found.sort(key=worst_first)
    if not everything:
        found = found[:SUMMARY_ROWS]
    costly = sum(d.costly for _, d in found)
    rows = []
    for layer, d in found:
        rows.append(
            [
                _wrap_name(layer.fold.producer, FOLD_NAME_WIDTH),
                _wrap_name(
                    layer.name + (f" #{layer.call}" if layer.call > 1 else ""),
                    FOLD_NAME_WIDTH,
                ),
                d.dtype,
                _fmt(d.unfolded_ulp_error_at_scale),
                _fmt(d.folded_ulp_error_at_scale),
                _fmt(d.fuse_conv_bn_eval_ulp_error_at_scale),
                "yes" if d.costly else "no",
            ]
        )
    title = (
        f"Folding {len(pairs)} conv/linear + batch norm pairs (found with {result.pairing}), "
        "error in ULP at the output's scale against float64 unfolded"
    )
    table = _table(
        title,
        ["conv/linear", "batch norm", "dtype", "unfolded", "folded", "fuse_*", "costly"],
        rows,
        left=(0, 1, 2),
    )
    notes = [
        f"{costly} of {len(rows)} shown cost more than twice ordinary rounding"
        if rows
        else "no pair found"
    ]
    if not isinstance(result.unpaired, Undefined) and result.unpaired:
        notes.append(
            f"not paired ({len(result.unpaired)}): "
            + ", ".join(result.unpaired[:6])
            + (" ..." if len(result.unpaired) > 6 else "")
        )
    notes.append("fuse_*: torch.nn.utils.fusion.fuse_conv_bn_eval / fuse_linear_bn_eval")
    failed = {
        d.fuse_conv_bn_eval_ulp_error_at_scale.reason
        for _, d in found
        if isinstance(d.fuse_conv_bn_eval_ulp_error_at_scale, Undefined)
    }
    notes += [f"fuse_* n/a: {reason}" for reason in sorted(failed)]
    return Group(table, Text("\n".join(notes), style="dim"))


def _layer_detail(layer: LayerReport) -> list[RenderableType]:
    parts: list[RenderableType] = []
    affine = "affine" if layer.affine else "no affine"
    if isinstance(layer.mode, Undefined):  # --weights alone: what the state_dict holds
        lines = [
            f"layer   {layer.index + 1}. {_label(layer)}: {layer.channels} channels, {affine}, "
            f"num_batches_tracked {_fmt(layer.num_batches_tracked)} (a state_dict: eps, "
            "momentum and mode are the module's)"
        ]
    else:
        lines = [
            f"layer   {layer.index + 1}. {_label(layer)}: {layer.module}, {layer.channels} "
            f"channels, eps {_fmt(layer.eps, 5)}, momentum {_fmt(layer.momentum, 5)}, {affine}, "
            f"{'tracks running stats' if layer.track_running_stats else 'no running stats'}, "
            f"{layer.mode} mode as given, num_batches_tracked "
            f"{_fmt(layer.num_batches_tracked)}",
            f"batch   {_fmt(layer.count)} values per channel",
        ]
    if layer.cause:
        lines.append(f"cause   {layer.cause}")
    parts.append(Text("\n".join(lines)))
    if not isinstance(layer.details, Undefined):
        headers = ["ch", "mean", "var", "run mean", "run var", "drift", "var x", "own", "gap"]
        rows = [
            [
                str(d.channel),
                _fmt(d.mean, 4),
                _fmt(d.var_biased, 4),
                _fmt(d.running_mean, 4),
                _fmt(d.running_var, 4),
                _fmt(d.mean_drift),
                _fmt(d.var_ratio),
                _fmt(d.own_gap),
                _fmt(d.gap),
            ]
            for d in layer.details
        ]
        parts.append(
            _table(
                "Per channel: the batch (float64) against the running buffers",
                headers,
                rows,
                left=(),
            )
        )
    if not isinstance(layer.population, Undefined):
        p = layer.population
        rows = [[c.name, _fmt(c.max_output_move), _fmt(c.worst_channel), c.how] for c in p.choices]
        parts.append(
            _table(
                f"Population statistics over {p.batches} batches ({p.count} values per channel)",
                ["choice", "moves output", "worst ch", "what it stores"],
                rows,
                left=(0, 3),
            )
        )
    if not isinstance(layer.fold, Undefined):
        f = layer.fold
        rows = []
        for d in f.dtypes:
            worst = ", ".join(
                f"{w.channel} ({_fmt(w.folded_ulp_error_at_scale)} ULP, run var "
                f"{_fmt(w.running_var)}, x{_fmt(w.fold_scale)})"
                for w in d.worst[:3]
            )
            rows.append(
                [
                    d.dtype,
                    _fmt(d.unfolded_ulp_error_at_scale),
                    _fmt(d.folded_ulp_error_at_scale),
                    _fmt(d.fuse_conv_bn_eval_ulp_error_at_scale),
                    worst or "-",
                ]
            )
        parts.append(
            _table(
                f"Folded into {f.producer} ({f.producer_kind}); float64 folded vs unfolded "
                f"differ by {_fmt(f.float64_abs_error)}",
                ["dtype", "unfolded", "folded", "fuse_*", "worst channels"],
                rows,
                left=(0, 4),
            )
        )
    if not isinstance(layer.dump, Undefined):
        d = layer.dump
        text = [f"dumped  {d.folder}: {', '.join(d.files)}"]
        text += [f"  $ {c}" for c in d.commands]
        if d.note:
            text.append(f"  not reproducible by run: {d.note}")
        parts.append(Text("\n".join(text)))
    return parts


def render_model(
    result: ModelResult, verbose: bool = False, show_all: bool = False
) -> list[RenderableType]:
    """The view under the verdict (render.screen prints that): what was inspected, the worst
    layers (every one with --all or --verbose), then what was asked for."""
    show_all = show_all or verbose
    parts: list[RenderableType] = [_header(result)]
    layers = result.layers
    first = result.first_divergence
    shown_in_full = len(layers) == 1 and layers[0].name == getattr(first, "name", None)
    if not isinstance(first, Undefined) and first.cause and not shown_in_full:
        # the verdict's cause in full, with its evidence
        parts.append(Text(labelled("cause", f"{first.name}: {first.cause}")))
    if not layers:
        return parts
    single = len(layers) == 1 and (
        not isinstance(layers[0].details, Undefined) or isinstance(result.batches, Undefined)
    )
    if single:
        parts += _layer_detail(layers[0])
    else:
        if show_all:
            title, shown = "Every batch norm, in forward order", layers
        else:
            worst = sorted(layers, key=_severity)[:SUMMARY_ROWS]
            title = f"The worst {len(worst)} of {len(layers)} batch norms (--all shows every one)"
            shown = worst
        if isinstance(result.batches, Undefined):  # --weights alone
            parts.append(_table(title, WEIGHTS_HEADERS, _weights_rows(shown)))
        else:
            parts.append(_table(title, LAYER_HEADERS, _layer_rows(shown)))
        if not isinstance(result.batches, Undefined):
            parts.append(_explain_columns(result))
        population = _population(result, layers if show_all else shown)
        if population is not None:
            parts.append(population)
        dumped = [layer for layer in layers if not isinstance(layer.dump, Undefined)]
        if dumped:
            parts.append(
                Text(
                    f"dumped  {len(dumped)} layers into {result.dump_dir}: each folder's "
                    "commands.sh reproduces its outputs bit for bit"
                )
            )
    folds = _folds(result, layers, show_all or single)
    if folds is not None:
        parts.append(folds)
    if result.flag_legend:
        parts.append(
            Text(
                "\n".join(
                    labelled(flag, meaning, pad=16) for flag, meaning in result.flag_legend.items()
                )
            )
        )
    parts.append(Text("\n".join(labelled("note", n) for n in result.notices), style="dim"))
    return parts
