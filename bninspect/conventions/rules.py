"""How each framework's batch norm computes, as plain data: one frozen ``Convention`` per
framework, read by pure functions elsewhere (``running``, ``reference``, ``derivation``,
``convention_card``). Nothing here computes on arrays.

Every framework normalizes with the biased variance (divide by N) and applies
``y = (x - mean) / sqrt(var + eps) * weight + bias``; they part on which variance goes into the
running buffer, what momentum means, the eps default, and what one value per channel does.
Each fact names where it comes from (``sources``, keyed by rule) and whether it was confirmed
(``unverified`` lists the rules that were not).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from bninspect.errors import OptionError

Variance = Literal["biased", "unbiased"]
# What the momentum number weighs, in each framework's own update rule:
#   "batch": new = (1 - m) * old + m * batch      (PyTorch; TF's exponential_avg_factor)
#   "keep":  new = m * old + (1 - m) * batch      (Keras, ONNX, Flax, MXNet, Paddle)
#   "caffe": sum = batch + f * sum, scale_factor = 1 + f * scale_factor,
#            running = sum / scale_factor
MomentumMeaning = Literal["batch", "keep", "caffe"]
# One value per channel in train mode: refuse (PyTorch), normalize anyway (variance 0, y = bias),
# or pass the input through untouched and skip the update (Paddle's CPU kernel).
OneValue = Literal["refuse", "normalize", "pass_through"]
RULES = ("normalizes", "stores", "momentum", "eps", "one_value")
# Each meaning's update as (weight of the old value, weight of the batch), {m} standing for
# the framework's name of the number; Caffe's "old value" is its unnormalized sum.
UPDATE_WEIGHTS: dict[str, tuple[str, str]] = {
    "batch": ("(1 - {m})", "{m}"),
    "keep": ("{m}", "(1 - {m})"),
    "caffe": ("{m}", "1"),
}


@dataclass(frozen=True)
class Convention:
    """One framework's batch-norm rules.

    ``stores`` is the variance folded into the running buffer; an unbiased one divides by
    max(N - 1, 1), as TensorFlow and Caffe do (PyTorch refuses N = 1 in train mode instead).
    ``eps_floor``: eps below it is raised to it. ``checked_against`` names the real framework this
    convention is tested against here, or None when it rests on reading the source.
    """

    name: str
    display: str  # how people write the framework's name
    framework: str
    stores: Variance
    momentum_meaning: MomentumMeaning
    momentum_parameter: str  # the framework's name for the number
    momentum_default: float
    eps_default: float
    sources: dict[str, str] = field(hash=False)  # rule (one of RULES) -> where the fact is from
    # What most frameworks share; a convention says otherwise where it differs.
    normalizes: Variance = "biased"
    one_value: OneValue = "normalize"
    accepts_cumulative: bool = False  # momentum None: the cumulative average (PyTorch only)
    eps_floor: float | None = None
    refuses_zero_eps_in_train: bool = False
    updates_in_backward: bool = False  # running statistics change in the backward pass (MXNet)
    checked_against: str | None = None  # the real framework this is tested against here
    unverified: tuple[str, ...] = ()  # rules taken from the shared card, not confirmed at source
    notes: tuple[str, ...] = ()

    @property
    def has_scale_factor(self) -> bool:
        """Caffe keeps unnormalized sums and a scale factor; everyone else divides by 1."""
        return self.momentum_meaning == "caffe"


PYTORCH = Convention(
    name="pytorch",
    display="PyTorch",
    framework="PyTorch nn.BatchNorm1d/2d/3d",
    stores="unbiased",
    momentum_meaning="batch",
    momentum_parameter="momentum",
    momentum_default=0.1,
    accepts_cumulative=True,
    eps_default=1e-5,
    one_value="refuse",
    refuses_zero_eps_in_train=True,
    checked_against="PyTorch's own module, in every run (the implementation under inspection)",
    sources={
        "normalizes": "aten/src/ATen/native/Normalization.cpp (pytorch/pytorch); run here",
        "stores": "aten/src/ATen/native/Normalization.cpp: running_var takes var * n / (n - 1)",
        "momentum": "torch/nn/modules/batchnorm.py: exponential_average_factor; momentum None "
        "gives 1 / num_batches_tracked",
        "eps": "torch/nn/modules/batchnorm.py (eps=1e-5); torch/nn/functional.py refuses "
        "eps <= 0 in training",
        "one_value": "torch/nn/functional.py _verify_batch_size: 'Expected more than 1 value "
        "per channel when training'",
    },
)

KERAS = Convention(
    name="keras",
    display="Keras",
    framework="Keras 3 keras.layers.BatchNormalization",
    stores="biased",
    momentum_meaning="keep",
    momentum_parameter="momentum",
    momentum_default=0.99,
    eps_default=1e-3,
    sources={
        "normalizes": "keras/src/layers/normalization/batch_normalization.py (keras-team/keras): "
        "ops.moments, the population variance",
        "stores": "keras/src/layers/normalization/batch_normalization.py: moving_variance takes "
        "the same variance",
        "momentum": "keras/src/layers/normalization/batch_normalization.py: moving_mean * "
        "momentum + mean * (1 - momentum), momentum=0.99",
        "eps": "keras/src/layers/normalization/batch_normalization.py: epsilon=1e-3",
        "one_value": "keras/src/layers/normalization/batch_normalization.py: no check; the "
        "variance of one value is 0",
    },
    notes=(
        "the numpy and torch backends compute the variance as E[x^2] - E[x]^2 in one pass "
        "(keras/src/backend/*/nn.py moments), which loses digits when |mean| >> std",
        "float16 and bfloat16 input is normalized in float32",
    ),
)

TF_FUSED = Convention(
    name="tf-fused",
    display="TensorFlow",
    framework="TensorFlow tf.nn.fused_batch_norm (FusedBatchNormV3, CPU kernel)",
    stores="unbiased",
    momentum_meaning="batch",
    momentum_parameter="exponential_avg_factor",
    momentum_default=1.0,
    eps_default=1e-3,
    eps_floor=1.001e-5,
    sources={
        "normalizes": "tensorflow/core/kernels/fused_batch_norm_op.cc (tensorflow/tensorflow): "
        "batch_variance = sum of squares / rest_size",
        "stores": "tensorflow/core/kernels/fused_batch_norm_op.cc: rest_size_adjust = n / "
        "max(n - 1, 1) (Bessel)",
        "momentum": "tensorflow/core/kernels/fused_batch_norm_op.cc: (1 - f) * old + f * batch; "
        "f = 1 (the default) keeps only the batch",
        "eps": "tensorflow/python/ops/nn_impl.py fused_batch_norm: epsilon=0.001, raised to "
        "min_epsilon 1.001e-5 (quoted in tensorflow/tensorflow#37768; PR #53065 to drop it "
        "was closed)",
        "one_value": "tensorflow/core/kernels/fused_batch_norm_op.cc: no check; max(n - 1, 1) "
        "stores 0",
    },
    notes=(
        "tf.keras 2 BatchNormalization takes this path for fused rank-4/5 input with "
        "exponential_avg_factor = 1 - momentum (unverified here)",
    ),
)

ONNX = Convention(
    name="onnx",
    display="ONNX",
    framework="ONNX BatchNormalization (opset 15)",
    stores="biased",
    momentum_meaning="keep",
    momentum_parameter="momentum",
    momentum_default=0.9,
    eps_default=1e-5,
    checked_against="onnxruntime, in the test suite (inference and training_mode=1)",
    sources={
        "normalizes": "onnx docs/Operators.md BatchNormalization-15: current_var = ReduceVar, the "
        "population variance",
        "stores": "onnx docs/Operators.md BatchNormalization-15: running_var = input_var * "
        "momentum + current_var * (1 - momentum)",
        "momentum": "onnx docs/Operators.md BatchNormalization-15: momentum default 0.9",
        "eps": "onnx docs/Operators.md BatchNormalization-15: epsilon default 1e-5",
        "one_value": "not in the spec; onnxruntime: variance 0, Y = B (run against it in "
        "bninspect's test suite)",
    },
    notes=(
        "attributes are float32: momentum 0.9 is 0.89999998, epsilon 1e-5 is 9.9999997e-6",
        "PyTorch's exporter writes momentum as 1 - m, but PyTorch stores the unbiased variance "
        "and ONNX the biased one: an exported training graph cannot match PyTorch's running_var",
    ),
)

FLAX = Convention(
    name="flax",
    display="Flax",
    framework="Flax linen.BatchNorm",
    stores="biased",
    momentum_meaning="keep",
    momentum_parameter="momentum",
    momentum_default=0.99,
    eps_default=1e-5,
    sources={
        "normalizes": "flax/linen/normalization.py (google/flax): _compute_stats, "
        "E[x^2] - E[x]^2 clipped at 0",
        "stores": "flax/linen/normalization.py: ra_var = momentum * ra_var + (1 - momentum) * var",
        "momentum": "flax/linen/normalization.py: BatchNorm momentum=0.99; not updated during init",
        "eps": "flax/linen/normalization.py: BatchNorm epsilon=1e-5",
        "one_value": "flax/linen/normalization.py: no check; the variance of one value is 0",
    },
    notes=(
        "the variance is E[x^2] - E[x]^2 in at least float32 (use_fast_variance=True), which "
        "loses digits when |mean| >> std",
        "the running statistics are not updated by Module.init",
    ),
)

CAFFE = Convention(
    name="caffe",
    display="Caffe",
    framework="Caffe BatchNorm layer (gamma and beta in a following Scale layer)",
    stores="unbiased",
    momentum_meaning="caffe",
    momentum_parameter="moving_average_fraction",
    momentum_default=0.999,
    eps_default=1e-5,
    sources={
        "normalizes": "src/caffe/layers/batch_norm_layer.cpp (BVLC/caffe): variance = E((X-EX)^2)",
        "stores": "src/caffe/layers/batch_norm_layer.cpp: bias_correction_factor = m / (m - 1), "
        "1 when m = 1",
        "momentum": "src/caffe/layers/batch_norm_layer.cpp: blobs = batch + f * blobs, scale "
        "factor = 1 + f * scale factor, inference divides by it (0 when it is 0); "
        "src/caffe/proto/caffe.proto: moving_average_fraction .999",
        "eps": "src/caffe/proto/caffe.proto: eps 1e-5",
        "one_value": "src/caffe/layers/batch_norm_layer.cpp: no check; stores 0",
    },
    notes=(
        "a fresh layer's blobs are all 0 (so its first step stores the batch statistics "
        "exactly); bninspect starts from the given running statistics with scale factor 1",
        "--weight and --bias act as the Scale layer that follows BatchNorm",
    ),
)

MXNET = Convention(
    name="mxnet",
    display="MXNet",
    framework="MXNet Gluon nn.BatchNorm (CPU operator)",
    stores="biased",
    momentum_meaning="keep",
    momentum_parameter="momentum",
    momentum_default=0.9,
    eps_default=1e-5,
    updates_in_backward=True,
    sources={
        "normalizes": "src/operator/nn/batch_norm.cc (apache/mxnet): variance = sum / "
        "itemCountPerChannel, kept as invstd",
        "stores": "src/operator/nn/batch_norm.cc: the backward pass folds 1/invstd^2 - eps into "
        "the moving variance (CPU); cuDNN stores the unbiased one",
        "momentum": "src/operator/nn/batch_norm.cc: moving * momentum + batch * (1 - momentum), "
        "in the backward pass; python/mxnet/gluon/nn/basic_layers.py momentum=0.9",
        "eps": "python/mxnet/gluon/nn/basic_layers.py epsilon=1e-5 (the bare operator: 1e-3, "
        "src/operator/nn/batch_norm-inl.h)",
        "one_value": "src/operator/nn/batch_norm.cc: no check in the CPU forward; variance 0",
    },
    unverified=("one_value",),
    notes=(
        "the CPU path updates the moving statistics in the backward pass: a forward pass "
        "without backward leaves them unchanged",
        "cuDNN (GPU) stores the unbiased variance (apache/mxnet#14357); bninspect follows the CPU",
    ),
)

PADDLE = Convention(
    name="paddle",
    display="Paddle",
    framework="PaddlePaddle nn.BatchNorm1D/2D/3D (CPU kernel)",
    stores="biased",
    momentum_meaning="keep",
    momentum_parameter="momentum",
    momentum_default=0.9,
    eps_default=1e-5,
    one_value="pass_through",
    sources={
        "normalizes": "paddle/phi/kernels/cpu/batch_norm_kernel.cc (PaddlePaddle/Paddle): "
        "saved_variance / (N * sample_size)",
        "stores": "paddle/phi/kernels/cpu/batch_norm_kernel.cc: running_var takes the saved "
        "(biased) variance",
        "momentum": "paddle/phi/kernels/cpu/batch_norm_kernel.cc: running * momentum + saved * "
        "(1 - momentum); python/paddle/nn/layer/norm.py momentum=0.9",
        "eps": "python/paddle/nn/layer/norm.py: epsilon=1e-05",
        "one_value": "paddle/phi/kernels/cpu/batch_norm_kernel.cc: N * sample_size == 1 copies x "
        "to y and returns before the update",
    },
    notes=("the GPU kernel's stored variance is not checked here",),
)

CONVENTIONS: dict[str, Convention] = {
    c.name: c for c in (PYTORCH, KERAS, TF_FUSED, ONNX, FLAX, CAFFE, MXNET, PADDLE)
}


def convention_named(name: str) -> Convention:
    """The convention called ``name``; OptionError listing the known ones otherwise."""
    try:
        return CONVENTIONS[name]
    except KeyError:
        raise OptionError(
            f"--convention {name}: unknown; give one of {', '.join(CONVENTIONS)}"
        ) from None


def effective_eps(convention: Convention, eps: float) -> tuple[float, str | None]:
    """The eps the framework actually uses for a requested ``eps``, and a notice if it differs
    (TensorFlow's wrapper raises anything at or below its floor to the floor)."""
    floor = convention.eps_floor
    if floor is None or eps > floor:
        return eps, None
    if eps == floor:
        return floor, None
    return floor, (
        f"{convention.name} raises eps {eps:g} to its floor {floor:g} "
        "(tf.nn.fused_batch_norm's min_epsilon)"
    )


def momentum_sentence(convention: Convention, momentum: float) -> str:
    """What ``momentum`` does in ``convention``'s rule, in words."""
    if convention.momentum_meaning == "batch":
        return f"gives the new batch weight {momentum:g} in the running statistics"
    if convention.momentum_meaning == "keep":
        return f"keeps {momentum:g} of the old value in the running statistics"
    return f"keeps {momentum:g} of the running sums at each step"


def batch_weight(convention: Convention, momentum: float) -> float:
    """The weight of a new batch in the running statistics, PyTorch's meaning of momentum, for
    ``momentum`` in ``convention``'s meaning. For Caffe this is the weight once the scale factor
    has settled at 1 / (1 - f); its early steps weigh the batch 1 / scale_factor."""
    return momentum if convention.momentum_meaning == "batch" else 1.0 - momentum


def scale_factor_weights(fraction: float, steps: int, scale_factor: float = 1.0) -> list[float]:
    """The weight of the batch in Caffe's running statistics at each of its first ``steps``
    steps from ``scale_factor``: the scale factor becomes 1 + f * s and the batch weighs
    1 / s, settling at 1 - f."""
    weights = []
    for _ in range(steps):
        scale_factor = 1.0 + fraction * scale_factor
        weights.append(1.0 / scale_factor)
    return weights


def momentum_for(convention: Convention, weight: float) -> float:
    """The inverse of ``batch_weight``: ``convention``'s momentum giving a new batch ``weight``."""
    return weight if convention.momentum_meaning == "batch" else 1.0 - weight
