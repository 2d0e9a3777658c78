"""Write the sample tensors in samples/ (run from anywhere; output is byte-for-byte reproducible).

    python scripts/make_samples.py

Each sample has a short Markdown note beside it saying what it shows; tests/test_samples.py
checks that this script reproduces the committed files exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLES = Path(__file__).resolve().parent.parent / "samples"

# The article's input, as printed with 4 decimals (shared/reference/article_example.md).
ARTICLE_INPUT = [
    [
        [-2.4308, -1.0281, -1.1322, 0.9819],
        [-0.4069, 0.7973, 1.6296, 1.6797],
        [0.2802, -0.8285, 2.0101, 0.1286],
    ],
    [
        [-0.5740, 0.1970, -0.7209, -0.7231],
        [-0.1489, 0.4993, 0.4159, 1.4238],
        [0.0334, -0.6333, 0.1308, -0.2180],
    ],
]


ARTICLE_WEIGHT = [0.5653, 0.0322]


def article_unbiased(x: np.ndarray) -> np.ndarray:
    """The article's tensor through a hand-written batch norm that divides the variance by
    N - 1 (numpy's var(ddof=1)), the mistake the article warns of: an output for `check`."""
    x = x.astype(np.float64)
    weight = np.array(ARTICLE_WEIGHT, dtype=np.float32).astype(np.float64).reshape(1, -1, 1, 1)
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3), ddof=1, keepdims=True)
    return ((x - mean) / np.sqrt(var + 1e-5) * weight).astype(np.float32)


def samples() -> dict[str, np.ndarray]:
    """Every sample by file name."""
    rng = np.random.default_rng(2024)
    # A batch of 4 sequences, 3 sensor channels, 16 time steps, each channel with its own
    # offset and scale, as raw sensor data has (BatchNorm1d's (N, C, L) form).
    offsets = np.array([20.0, -3.0, 0.5])[None, :, None]
    scales = np.array([2.0, 0.1, 5.0])[None, :, None]
    sequence = (offsets + scales * rng.standard_normal((4, 3, 16))).astype(np.float32)
    # A tiny video/volume batch (N, C, D, H, W) = (2, 2, 3, 4, 4) for BatchNorm3d.
    volume = rng.standard_normal((2, 2, 3, 4, 4)).astype(np.float32)
    # Channel 1 is constant: variance 0, so every output of it equals the bias and eps alone
    # keeps the division finite.
    constant = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    constant[:, 1] = 3.0
    article = np.array([ARTICLE_INPUT], dtype=np.float32)
    # The backward pass on the article's tensor (docs/grad.md): dy as bninspect draws it by
    # default (stream 5 of seed 0), and a dx from a backward with a classic mistake, the batch
    # statistics treated as constants (dx = weight * inv_std * dy, the eval formula in train
    # mode), computed in float64 and rounded to float32.
    dy = np.random.default_rng([0, 5]).standard_normal(article.shape, dtype=np.float32)
    weight = np.array([0.5653, 0.0322], dtype=np.float32).astype(np.float64).reshape(1, -1, 1, 1)
    x = article.astype(np.float64)
    inv_std = 1 / np.sqrt(x.var(axis=(0, 2, 3), keepdims=True) + 1e-5)
    dx_mistaken = (weight * inv_std * dy.astype(np.float64)).astype(np.float32)
    return {
        "article.npy": article,
        "article_unbiased.npy": article_unbiased(article),
        "article_grad_output.npy": dy,
        "article_grad_input_mistaken.npy": dx_mistaken,
        "sequence_3d.npy": sequence,
        "volume_5d.npy": volume,
        "constant_channel.npy": constant,
    }


def main() -> None:
    SAMPLES.mkdir(exist_ok=True)
    for name, array in samples().items():
        np.save(SAMPLES / name, array, allow_pickle=False)
        print(f"wrote {SAMPLES / name} {array.shape} {array.dtype}")


if __name__ == "__main__":
    main()
