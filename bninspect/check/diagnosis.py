"""``check``'s diagnosis: try every known mistake in the catalogue against their output and keep
the ones that explain it, best first.

A mistake explains the output when, under it, the remaining error is at the level of rounding
(within ROUNDING_ULPS ULPs at each channel's scale, in the precision the mistake computes in)
while the error under the stated settings is not. Fitted mistakes (which estimate an eps, or a
mean and variance, from the output) can mimic specific ones, so they rank after those.
"""

from __future__ import annotations

import numpy as np

from bninspect.check.compare import ROUNDING_ULPS, scaled_errors
from bninspect.check.variants import CATALOGUE, Outcome
from bninspect.numerics.kernels import Progress
from bninspect.pytorch.inspection import Inspection
from bninspect.results.check import Diagnosis, Hypothesis
from bninspect.results.common import Number, Undefined


def diagnose(
    inspection: Inspection, theirs: np.ndarray, stated: np.ndarray, tell: Progress | None = None
) -> tuple[Diagnosis, list[str | Undefined]]:
    """Every applicable mistake with its remaining error, best first, and per channel the best
    explaining one. ``stated`` is the per-channel error under the stated settings (scaled ULPs of
    the input dtype). ``tell`` is called with the input's bytes after each mistake is tried."""
    dtype, weight = inspection.tensor.info.dtype, inspection.params.weight
    channels = theirs.shape[1]
    stated_max = float(np.max(stated)) if stated.size else 0.0
    needed = stated_max > ROUNDING_ULPS
    hypotheses, per_channel = [], []
    plausible = {}
    for variant in CATALOGUE:
        outcome = variant.compute(inspection, theirs)
        if tell is not None:
            tell(inspection.batch.nbytes)
        if outcome is None:
            continue
        if not isinstance(outcome, Outcome):
            outcome = Outcome(outcome)
        precision = variant.precision or dtype
        errors = scaled_errors(theirs, outcome.output, weight, precision)
        worst: Number = float(errors.max())
        explains = needed and worst <= ROUNDING_ULPS and outcome.plausible
        hypotheses.append(
            Hypothesis(
                variant.name,
                variant.description,
                precision,
                worst,
                bool(explains),
                outcome.detail,
                variant.fitted,
                outcome.eps_per_channel,
            )
        )
        per_channel.append((variant.name, errors))
        plausible[variant.name] = outcome.plausible
    hypotheses.sort(key=lambda h: (not h.explains, h.fitted, h.max_ulp_error))
    # Per channel, the first variant in that order fitting it: the tensor-wide explanation
    # where it fits, so that one mistake is not named differently from channel to channel.
    errors_of = dict(per_channel)
    best: list[str | Undefined] = []
    for c in range(channels):
        if stated[c] <= ROUNDING_ULPS:
            best.append("stated settings")
            continue
        fits = [
            h.name
            for h in hypotheses
            if plausible[h.name] and errors_of[h.name][c] <= ROUNDING_ULPS
        ]
        best.append(fits[0] if fits else Undefined("no known variant fits this channel"))
    explaining = [h for h in hypotheses if h.explains]
    if not needed:
        summary = (
            f"your output matches the stated settings within {stated_max:.3g} ULP at the "
            "channel's scale: nothing to explain"
        )
    elif explaining:
        first = explaining[0]
        how = f" ({first.detail})" if first.detail else ""
        summary = (
            f"your output {first.description}{how}: under that mistake the error drops "
            f"from {stated_max:.3g} to {first.max_ulp_error:.3g} ULP at the channel's scale"
        )
    else:
        closest = hypotheses[0] if hypotheses else None
        near = (
            f"; the closest, {closest.name}, leaves {closest.max_ulp_error:.3g} ULP"
            if closest
            else ""
        )
        summary = (
            f"no known variant explains this: {stated_max:.3g} ULP at the channel's scale "
            f"under the stated settings{near}; see the per-channel evidence"
        )
    return Diagnosis(bool(explaining), summary, tuple(hypotheses)), best
