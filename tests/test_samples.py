"""The committed samples are what scripts/make_samples.py writes, and each is documented."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def load_script():
    spec = importlib.util.spec_from_file_location("make_samples", ROOT / "scripts/make_samples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_reproduces_every_committed_sample_exactly(tmp_path):
    for name, array in load_script().samples().items():
        np.save(tmp_path / name, array, allow_pickle=False)
        assert (tmp_path / name).read_bytes() == (ROOT / "samples" / name).read_bytes(), name


def test_every_sample_is_described_and_runs(cli):
    readme = (ROOT / "samples" / "README.md").read_text()
    for name in load_script().samples():
        assert f"## {name}" in readme, name
        doc = cli.json("run", "--input", ROOT / "samples" / name)
        assert doc["max_abs_error"] < 1e-4


def test_samples_show_what_they_claim(cli):
    shapes = {name: array.shape for name, array in load_script().samples().items()}
    assert len(shapes["sequence_3d.npy"]) == 3 and len(shapes["volume_5d.npy"]) == 5
    channel = cli.json(
        "run", "--input", ROOT / "samples/constant_channel.npy", "--bias", "0,0.5,0"
    )["channels"][1]
    assert channel["var_biased"] == 0.0 and channel["mean"] == 3.0
    explained = cli.json(
        "explain",
        "--input",
        ROOT / "samples/constant_channel.npy",
        "--bias",
        "0,0.5,0",
        "--index",
        "0,1,0,0",
    )
    assert explained["y"]["reference"] == 0.5
    # PyTorch computes x * alpha + beta with alpha = 1/sqrt(1e-5) ~ 316 and beta = 0.5 - 3 * alpha:
    # the sum cancels at magnitude ~949, where a float32 spacing is 2**-14.
    assert abs(explained["y"]["torch"] - 0.5) <= 2.0**-14
