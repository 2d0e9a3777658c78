"""Channel health: per-channel warnings a careful reader of the statistics would raise.

Each flag is a short code with a one-line meaning (LEGEND), derived from the reference
statistics only, so it says something about the data and the layer, not about PyTorch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bninspect.dtypes import float_format

# eps / (var + eps) above this: eps, not the data, sets the output's scale (by more than 0.5%).
EPS_SHARE_LIMIT = 0.01
# x * alpha + beta cancels, losing about log2(|mean| / std) bits of the output: flag the loss of
# more than this share of the dtype's mantissa (float32: 7.7 of 23 bits, |mean| / std > 203).
CANCELLATION_SHARE = 1 / 3
FLOAT16_MAX = 65504.0


def cancellation_limit(dtype: str) -> float:
    """The |mean| / std above which the "cancel" flag is raised for ``dtype``."""
    return 2.0 ** (CANCELLATION_SHARE * float_format(dtype).mantissa_bits)


LEGEND = {
    "nan": "the channel holds NaN: its statistics and outputs are NaN",
    "inf": "the channel holds +-Inf: its statistics are not finite",
    "constant": "variance 0: every output equals the bias (x - mean = 0); eps alone keeps "
    "sqrt(var + eps) from 0",
    "eps": f"eps / (var + eps) > {EPS_SHARE_LIMIT:g}: eps, not the data, sets the output scale",
    "cancel": "|mean| / std above 2**(mantissa bits / 3) (float32: 203): x * alpha + beta "
    "cancels, losing about log2(|mean| / std) bits of the output",  # legend() names the dtype
    "fp16-overflow": f"sum of squares > {FLOAT16_MAX:g}: a float16 accumulation of the "
    "variance would overflow",
}
# In eval mode the running statistics normalize, so a constant channel's outputs are all equal
# but not the bias.
EVAL_CONSTANT = (
    "batch variance 0: the values are all equal, so are the outputs; not the bias, as eval mode "
    "subtracts running_mean"
)


def cancel_meaning(dtype: str) -> str:
    """The "cancel" flag's meaning, with ``dtype``'s limit."""
    return (
        f"|mean| / std above 2**(mantissa bits / 3) ({dtype}: "
        f"{cancellation_limit(dtype):.3g}): x * alpha + beta cancels, losing about "
        "log2(|mean| / std) bits of the output"
    )


def legend(mode: str, dtype: str = "float32") -> dict[str, str]:
    """Each flag's meaning for a layer in ``mode`` ("train" or "eval") on ``dtype`` input."""
    meanings = {**LEGEND, "cancel": cancel_meaning(dtype)}
    return meanings if mode == "train" else {**meanings, "constant": EVAL_CONSTANT}


@dataclass(frozen=True)
class Health:
    """One channel's health measures and the flags they raise."""

    eps_share: float  # eps / (var + eps), var being the one that normalizes
    mean_to_std: float  # |mean| / sqrt(var + eps)
    bits_lost: float  # log2(mean_to_std) where above 1, else 0: output bits cancellation costs
    sum_of_squares: float  # sum of x^2 = m2 + count * mean^2
    flags: tuple[str, ...]


def channel_health(
    *,
    count: int,
    batch_mean: float,
    batch_m2: float,
    nan: int,
    inf: int,
    mean: float,
    var: float,
    eps: float,
    dtype: str,
) -> Health:
    """Health of one channel: ``batch_*`` describe the data, ``mean``/``var`` are what
    normalizes (batch or running), ``dtype`` the one PyTorch ran in."""
    finite = nan == 0 and inf == 0 and math.isfinite(mean) and math.isfinite(var)
    if not finite:  # NaN or Inf make every measure meaningless; say only that
        flags = ("nan",) * (nan > 0) + ("inf",) * (inf > 0)
        return Health(math.nan, math.nan, math.nan, math.nan, flags)
    std = math.sqrt(var + eps)
    eps_share = eps / (var + eps) if var + eps > 0 else math.nan
    mean_to_std = abs(mean) / std if std > 0 else (0.0 if mean == 0 else math.inf)
    bits_lost = math.log2(mean_to_std) if mean_to_std > 1 else 0.0
    sum_of_squares = batch_m2 + count * batch_mean * batch_mean
    flags = []
    if batch_m2 == 0:
        flags.append("constant")
    if eps_share > EPS_SHARE_LIMIT:
        flags.append("eps")
    if mean_to_std > cancellation_limit(dtype):
        flags.append("cancel")
    if dtype == "float16" and sum_of_squares > FLOAT16_MAX:
        flags.append("fp16-overflow")
    return Health(eps_share, mean_to_std, bits_lost, sum_of_squares, tuple(flags))
