"""PyTorch's CPU batch-norm forward, redone step by step in the arithmetic it uses, for one
channel and one element. Pure numpy and exact rationals; no torch.

Read from aten/src/ATen/native/cpu/batch_norm_kernel.cpp and Normalization.cpp (PyTorch 2.x)
and checked against torch bit for bit in tests/test_precision.py.

float32 and float64:

- contiguous input with more than one value per image (rank 3 to 5): sum in float64 over the
  channel in memory order; mean = that / N rounded to the dtype; deviations and their squares
  in the dtype, summed in float64, rounded to the dtype (var_sum); var = var_sum / N in the
  dtype; invstd = 1 / sqrt(var + eps) in float64, rounded to the dtype;
- one value per image (rank 2), N larger than the thread count: each thread sums its rows in
  the dtype, the threads' sums are added in float64; deviations squared and added with one
  rounding (FMA) per step in the dtype;
- then alpha = invstd * weight in the dtype, beta = bias - mean * alpha and y = x * alpha + beta
  each with a single rounding, as the vectorized kernel's fused multiply-add gives them (on a
  CPU without FMA, PyTorch rounds twice: see ``fused``).
- eval mode: invstd = 1 / sqrt(running_var + eps) in the dtype.

float16 and bfloat16 (with weight, bias and buffers in the same dtype, as bninspect runs them),
in float32 throughout, values converted as loaded; where the source left it open, measured
against torch 2.13 (the lane count, and where the compiler fuses a multiply and an add):

- contiguous input with more than one value per image: the sum of x in 8 float32 vector lanes
  (see ``_lane_sum``); mean = sum / N in float32; the squares of the deviations from that
  float32 mean, each rounded to float32, summed the same way (var_sum);
- one value per image: per-thread float32 sums as for float32 input (one thread when N <= the
  thread count); deviations from the mean as stored (below), squared and added with one rounding
  (FMA) per step where the CPU has FMA;
- bfloat16 stores mean and var_sum in bfloat16, and var = var_sum / N in bfloat16 (N rounded
  to bfloat16 too: 514 becomes 512); float16 keeps both in float32 (PyTorch's guard against
  float16 overflow, pytorch#126525) and var = var_sum / N in float32;
- invstd = 1 / sqrt(var + eps) in float64, rounded to float32; the output pass gets mean and
  invstd rounded to the dtype (save_mean and save_invstd are in the input's dtype);
- alpha = invstd * weight in float32 (exact in train mode: both are dtype numbers); beta = bias
  - mean * alpha in float32: for float16 with the product rounded first (never fused), for
  bfloat16 with one rounding where the CPU has FMA (in train mode mean * alpha is exact in
  float32 then, so it shows only in eval mode); y = x * alpha + beta in float32, with one
  rounding where the CPU has FMA, then rounded to the dtype;
- eval mode: invstd = 1 / sqrt(running_var + eps) in float32, not rounded to the dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from bninspect.dtypes import float_format

# float16/bfloat16: the float32 lanes of the reduced-precision kernels' sums. Measured, not read:
# with the AVX512, AVX2 and DEFAULT kernels alike, PyTorch's float32 mean and var_sum (seen
# through float32 parameters) match 8 lanes in every sampled channel, and 16 lanes or a plain
# sequential sum miss some.
HALF_LANES = 8

# Paths through PyTorch's kernel; the emulation says which one it followed.
CONTIGUOUS = "contiguous: sequential float64 sums"
PER_THREAD = "one value per image, N > threads: per-thread partial sums in the dtype"
SMALL_BATCH = "one value per image, N <= threads: sequential float64 sums"
HALF_CONTIGUOUS = f"float16/bfloat16, contiguous: float32 sums in {HALF_LANES} vector lanes"
HALF_PER_THREAD = "float16/bfloat16, one value per image, N > threads: per-thread float32 sums"
HALF_SMALL_BATCH = "float16/bfloat16, one value per image, N <= threads: sequential float32 sums"
EVAL = "eval: running statistics"

TESTED = "bit for bit: bninspect's test suite checks every element against torch"
# Measured with scripts/measure_half_emulation.py on torch 2.13, 2 threads: every element of
# its grid (rank 2 to 5, train and eval, unit and random parameters, offsets to 1000, and x at
# the running mean to 3000), and of its --quick grid with ATEN_CPU_CAPABILITY=avx2 and =default.
HALF_TESTED = (
    "bit for bit: bninspect's test suite checks every element against torch; all 1,891,744 "
    "elements sampled matched with the AVX512 kernel (all 483,718 of a quarter of them with "
    "AVX2 and with DEFAULT)"
)


# Only C-contiguous input takes the kernel emulated here (measured: for a Fortran-ordered
# float16 input in eval mode, PyTorch gives y = bias exactly where x equals the running mean,
# which the kernel's x * alpha + beta does not).
STRIDED = (
    "the input is not C-contiguous (a Fortran-ordered file, say), so PyTorch skips the kernel "
    "this emulates for its generic strided loops, whose rounding differs; save it with "
    "numpy.save(path, numpy.ascontiguousarray(x)) to see the kernel's bits"
)


# With one value per image, train mode sums each channel's values one at a time, as PyTorch's
# threads do, in Python with exact rationals: about 0.1 ms a value here. Channels longer than
# this would take minutes: refused before any work (one_value_cost).
PYTHON_VALUES_LIMIT = 200_000


def one_value_cost(values_per_channel: int, image_size: int, train: bool) -> str | None:
    """Why emulating a channel of ``values_per_channel`` values (``image_size`` per image)
    would take too long, or None."""
    if not train or image_size > 1 or values_per_channel <= PYTHON_VALUES_LIMIT:
        return None
    seconds = values_per_channel * 1e-4
    took = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} minutes"
    return (
        f"--precision redoes PyTorch's arithmetic for one value per image in Python, one value "
        f"at a time (about 0.1 ms each): the channel's {values_per_channel} values would take "
        f"about {took}; explain a batch of at most {PYTHON_VALUES_LIMIT} samples "
        "(--batch-size, or a slice of the input)"
    )


def claim(dtype: str, path: str) -> str:
    """How closely the emulation follows PyTorch on this dtype and path, as measured."""
    if dtype in ("float16", "bfloat16"):
        return HALF_TESTED
    if path == EVAL or (dtype == "float32" and path in (CONTIGUOUS, PER_THREAD)):
        return TESTED
    if dtype == "float32":
        return "usually bit for bit: about 3% of sampled channels differ by 1 ULP (cause not found)"
    return (
        "usually bit for bit: about 0.5% of sampled float64 channels differ by a few ULP "
        "(cause not found)"
    )


def exact(value: float) -> Fraction | float:
    """``value`` as an exact rational, or as it is if it is infinite or NaN: Python's arithmetic
    then carries it as IEEE's would (inf + 1 = inf, inf - inf = NaN), so an overflow in the
    emulated arithmetic is a value in its result, as in PyTorch's, not an exception."""
    value = float(value)
    return Fraction(value) if math.isfinite(value) else value


def round_to(value: Fraction | float, dtype: str) -> float:
    """The ``dtype`` number nearest to ``value`` (an exact rational, or an infinite or NaN
    float, which stays as it is), ties to even; beyond the dtype's largest number by half an
    ULP or more, infinity, as IEEE rounding overflows."""
    if isinstance(value, float) and not math.isfinite(value):
        return value
    target = float_format(dtype).numpy
    exact_value = Fraction(value)
    largest = np.nextafter(target.type(np.inf), target.type(0))
    below = np.nextafter(largest, target.type(0))
    top = Fraction(float(largest))
    sign = -1.0 if exact_value < 0 else 1.0  # copysign would take the Fraction as a float
    if abs(exact_value) >= top + (top - Fraction(float(below))) / 2:
        return sign * math.inf
    if abs(exact_value) >= top:
        return sign * float(largest)
    with np.errstate(over="ignore"):  # within one step of the answer, which is finite
        guess = np.asarray(float(exact_value)).astype(target)
        candidates = [  # a step beyond the largest is infinite, and left out below
            np.nextafter(guess, target.type(-np.inf)),
            guess,
            np.nextafter(guess, target.type(np.inf)),
        ]
    finite = [c for c in candidates if np.isfinite(c)]

    def distance(c) -> tuple[Fraction, int]:
        bits = int(np.asarray(c).view(f"u{target.itemsize}"))
        return abs(Fraction(float(c)) - exact_value), bits & 1  # nearest, then even

    return float(min(finite, key=distance))


def divide(a: Fraction | float, b: Fraction | float) -> Fraction | float:
    """a / b as IEEE divides: by 0, an infinity of a's sign (NaN for 0 / 0)."""
    if b == 0:
        return math.nan if a == 0 or a != a else math.copysign(math.inf, a)
    return a / b


def fused(a: float, b: float, c: float, dtype: str, fma: bool) -> float:
    """a * b + c in ``dtype``: one rounding with FMA, else the product rounded first."""
    if fma:
        return round_to(exact(a) * exact(b) + exact(c), dtype)
    return round_to(exact(round_to(exact(a) * exact(b), dtype)) + exact(c), dtype)


@dataclass(frozen=True)
class EmulatedChannel:
    """PyTorch's intermediate values for one channel, each exactly as PyTorch holds it: in the
    dtype; for float16/bfloat16, in the types the module's docstring gives (total, alpha and
    beta in float32, mean and invstd in the dtype, var_sum and var in bfloat16 or float32)."""

    path: str
    total: float  # the sum of x PyTorch forms (train mode): float64, float32 for float16/bfloat16
    mean: float  # the mean the output pass uses (running_mean in eval mode)
    var_sum: float  # train mode
    var: float  # var_sum / N in train mode, running_var in eval mode
    invstd: float
    alpha: float
    beta: float
    centre: float  # the mean var_sum's deviations are taken about (train mode)


def _sequential_sum(values: np.ndarray) -> float:
    """A plain float64 loop's sum, in order (numpy's cumsum accumulates sequentially); past
    float64's range, infinite, as the loop's."""
    with np.errstate(over="ignore", invalid="ignore"):
        return float(np.cumsum(values.astype(np.float64))[-1])


def _per_thread_sums(
    values: np.ndarray, threads: int, dtype: str, square_mean: float | None, fma: bool
) -> float:
    """at::parallel_for's split of N rows over ``threads``: each thread accumulates its rows in
    the dtype (x, or (x - mean)^2 with FMA), then the partial sums are added in float64."""
    chunk = -(-values.size // threads)
    total = 0.0
    for start in range(0, values.size, chunk):
        partial = 0.0
        for v in values[start : start + chunk]:
            v = float(v)
            if square_mean is None:
                partial = round_to(exact(partial) + exact(v), dtype)
            else:
                d = round_to(exact(v) - exact(square_mean), dtype)
                partial = fused(d, d, partial, dtype, fma)
        total += partial
    return total


def _float32_sums(terms: np.ndarray) -> np.ndarray:
    """Sequential float32 sums along axis 0 of ``terms`` (float32), from +0 as a C++ loop starts,
    so that all -0 terms sum to +0 as there."""
    zero = np.zeros((1, *terms.shape[1:]), np.float32)
    return np.cumsum(np.concatenate([zero, terms]), axis=0, dtype=np.float32)[-1]


def _lane_sum(terms: np.ndarray) -> np.float32:
    """The float32 sum of ``terms`` (n_batch, image_size), float32, as the contiguous
    reduced-precision kernel forms it: each image's values in blocks of 2 * HALF_LANES, each
    block converted to two float32 vectors added to the lanes in turn (so lane l takes values l
    and HALF_LANES + l of every block, image after image); the image's last image_size mod
    2 * HALF_LANES values go to a scalar float32 sum, in memory order; the result is that sum
    plus the lanes added in order (vec_reduce_all's slow path: lane 0, + lane 1, + lane 2...)."""
    block = 2 * HALF_LANES
    full = terms.shape[1] - terms.shape[1] % block
    lanes = _float32_sums(terms[:, :full].reshape(-1, HALF_LANES))
    scalar = _float32_sums(terms[:, full:].reshape(-1))
    vector = lanes[0]
    for lane in lanes[1:]:
        vector = np.float32(vector + lane)
    return np.float32(scalar + vector)


def _thread_chunks(values: np.ndarray, threads: int) -> list[np.ndarray]:
    """at::parallel_for's split of N rows over ``threads``, in thread order."""
    chunk = -(-values.size // threads)
    return [values[start : start + chunk] for start in range(0, values.size, chunk)]


def _float32_square_sum(deviations: np.ndarray, fma: bool) -> float:
    """A float32 loop's sum of d * d over ``deviations`` (float32), in order, each step with one
    rounding (FMA) or the square rounded first."""
    total = 0.0
    for d in deviations.tolist():
        total = fused(d, d, total, "float32", fma)
    return total


def _in(value, dtype: str) -> float:
    """``value`` (a float32 or float64 number) rounded to ``dtype``, to nearest, ties to even."""
    return float(np.asarray(value).astype(float_format(dtype).numpy))


def _half_statistics(
    values: np.ndarray, dtype: str, eps: float, image_size: int, threads: int, fma: bool
) -> tuple[str, float, float, float, float, float, float]:
    """(path, total, centre, mean, var_sum, var, invstd) of a float16/bfloat16 channel in train
    mode, as PyTorch holds each (see the module's docstring)."""
    with np.errstate(over="ignore", invalid="ignore"):  # bfloat16 sums past float32: inf, as there
        return _half_statistics_in_float32(values, dtype, eps, image_size, threads, fma)


def _half_statistics_in_float32(
    values: np.ndarray, dtype: str, eps: float, image_size: int, threads: int, fma: bool
) -> tuple[str, float, float, float, float, float, float]:
    """_half_statistics, with numpy's float32 arithmetic standing for PyTorch's."""
    x = values.astype(np.float32)
    n = x.size
    if image_size > 1:
        path = HALF_CONTIGUOUS
        total = _lane_sum(x.reshape(-1, image_size))
    else:  # each thread's rows into its own float32 buffer, then the buffers added in order
        path = HALF_PER_THREAD if n > threads else HALF_SMALL_BATCH
        rows = _thread_chunks(x, threads if n > threads else 1)
        total = _float32_sums(np.array([_float32_sums(r) for r in rows], np.float32))
    centre = np.float32(total / np.float32(n))
    # The stats tensors are the dtype for bfloat16; float32 for float16 (PyTorch rounds neither
    # mean nor var_sum to float16 there, which would overflow).
    stats = "bfloat16" if dtype == "bfloat16" else "float32"
    if path == HALF_CONTIGUOUS:  # about the float32 mean, whatever the stats' dtype
        d = x - centre
        # the vector loop's d * d is rounded before it is added: no FMA here (measured)
        var_sum_acc = _lane_sum((d * d).reshape(-1, image_size))
    else:  # about the mean as stored in the stats tensor, with FMA where the CPU has it
        centre = np.float32(_in(centre, stats))
        parts = [_float32_square_sum(r - centre, fma) for r in rows]
        var_sum_acc = _float32_sums(np.array(parts, np.float32))
    var_sum = _in(var_sum_acc, stats)
    # var_sum / N: bfloat16 / int64 divides by N rounded to bfloat16, float by N in float32
    var = _in(np.float32(var_sum) / np.float32(_in(np.float32(n), stats)), stats)
    # InvStd<float>: var + eps in float64 (eps is a double), the quotient rounded to float32;
    # PyTorch then stores it in the dtype (save_invstd)
    invstd = _in(np.float32(1 / math.sqrt(var + eps)), dtype) if var + eps > 0 else 0.0
    return path, float(total), float(centre), _in(centre, dtype), var_sum, var, invstd


def emulate_channel(
    values: np.ndarray,
    dtype: str,
    weight: float,
    bias: float,
    eps: float,
    train: bool,
    running_mean: float,
    running_var: float,
    image_size: int,
    threads: int,
    fma: bool,
) -> EmulatedChannel:
    """PyTorch's mean, variance, invstd, alpha and beta for one channel whose values, in memory
    order, are ``values`` (in ``dtype``); ``image_size`` is the spatial size per image."""
    half = dtype in ("float16", "bfloat16")
    work = "float32" if half else dtype
    n = values.size
    if not train:
        mean, var, centre = running_mean, running_var, math.nan
        var_eps = round_to(exact(var) + exact(round_to(eps, work)), work)
        invstd = round_to(divide(1, exact(round_to(math.sqrt(var_eps), work))), work)
        path, total, var_sum = EVAL, math.nan, math.nan
    elif half:
        path, total, centre, mean, var_sum, var, invstd = _half_statistics(
            values, dtype, eps, image_size, threads, fma
        )
    else:
        if image_size > 1:
            path = CONTIGUOUS
        else:
            path = PER_THREAD if n > threads else SMALL_BATCH
        if path == PER_THREAD:
            total = _per_thread_sums(values, threads, work, None, fma)
        else:
            total = _sequential_sum(values)
        mean = centre = round_to(exact(total) / n, work)
        if path == PER_THREAD:
            var_sum_acc = _per_thread_sums(values, threads, work, mean, fma)
        else:
            wide = values.astype(float_format(work).numpy)
            with np.errstate(over="ignore", invalid="ignore"):  # inf or NaN, as in PyTorch
                deviations = wide - float_format(work).numpy.type(mean)
                var_sum_acc = _sequential_sum(deviations * deviations)
        var_sum = round_to(var_sum_acc, work)
        var = round_to(exact(var_sum) / exact(round_to(n, work)), work)
        invstd = round_to(1 / math.sqrt(var + eps), work) if var + eps > 0 else 0.0
    alpha = round_to(exact(invstd) * exact(weight), work)
    # Measured, not read: the float16 kernel rounds mean * alpha before subtracting it, while
    # the bfloat16 one fuses the two like float32 (the compiler contracts c10's inline bfloat16
    # arithmetic, not float16's conversions). Only eval mode tells: in train mode, mean, invstd
    # and weight are bfloat16 numbers, whose product is exact in float32.
    beta = fused(-mean, alpha, bias, work, fma and dtype != "float16")
    return EmulatedChannel(path, total, mean, var_sum, var, invstd, alpha, beta, centre)


def how_steps(dtype: str, path: str, fma: bool) -> dict[str, str]:
    """How PyTorch computes each step (mean, var_sum, var in train mode; invstd, alpha, beta,
    y) on this dtype and path, in words, naming the type each value is held in."""
    one_rounding = "with one rounding (FMA)" if fma else "rounded twice (no FMA on this CPU)"
    if dtype not in ("float16", "bfloat16"):
        return {
            "mean": "sum of x in float64, / N, rounded to the dtype",
            "var_sum": "sum of (x - mean)^2, each term in the dtype, summed in float64, "
            "rounded to the dtype",
            "var": "var_sum / N in the dtype",
            "invstd": "1 / sqrt(running_var + eps) in the dtype"
            if path == EVAL
            else "1 / sqrt(var + eps) in float64, rounded to the dtype",
            "alpha": "weight * invstd in the dtype",
            "beta": f"bias - mean * alpha, {one_rounding}",
            "y": f"x * alpha + beta, {one_rounding}",
        }
    stats = "rounded to bfloat16" if dtype == "bfloat16" else "kept in float32"
    if path == HALF_CONTIGUOUS:
        summed = f"in {HALF_LANES} float32 vector lanes"
        squares = "about the float32 mean, squares rounded to float32, summed like x"
    else:
        summed = (
            "in float32, in order"
            if path == HALF_SMALL_BATCH
            else "in float32 per thread, the threads' sums added in order"
        )
        fused_squares = "one rounding per step (FMA)" if fma else "the square rounded first"
        squares = f"about the mean {stats}, summed like x with {fused_squares}"
    if path == EVAL:
        invstd = "1 / sqrt(running_var + eps) in float32"
        alpha = "weight * invstd in float32"
    else:
        invstd = f"1 / sqrt(var + eps) in float64, rounded to float32, then to {dtype}"
        alpha = f"weight * invstd in float32 (exact: both are {dtype} numbers)"
    return {
        "mean": f"sum of x {summed}, / N in float32, rounded to {dtype}",
        "var_sum": f"sum of (x - mean)^2 {squares}; {stats}",
        "var": "var_sum / N in bfloat16 (N rounded to bfloat16 too)"
        if dtype == "bfloat16"
        else "var_sum / N in float32",
        "invstd": invstd,
        "alpha": alpha,
        "beta": (
            "bias - mean * alpha in float32, the product rounded first (no FMA)"
            if dtype == "float16"
            else f"bias - mean * alpha in float32, {one_rounding}"
        ),
        "y": f"x * alpha + beta in float32, {one_rounding}, rounded to {dtype}",
    }


def emulate_output(x: float, channel: EmulatedChannel, dtype: str, fma: bool) -> float:
    """y = x * alpha + beta as PyTorch's kernel rounds it, in ``dtype``."""
    work = "float32" if dtype in ("float16", "bfloat16") else dtype
    y = fused(x, channel.alpha, channel.beta, work, fma)
    return round_to(y, dtype) if work != dtype else y
