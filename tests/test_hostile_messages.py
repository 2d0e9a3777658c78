"""Messages that said the wrong thing (issue 14, item 15, found again on main): an .npz renamed
.npy was "a PyTorch file"; --stats-only on bool or float128 advised the native byte order;
check --allow-nonfinite-mismatch said "PASS within the given tolerance" with no tolerance given
and "All 300 elements within ..." with one of them NaN."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch


def test_zip_files_are_told_apart(cli, tmp_path):
    """numpy.savez's archive has *.npy members, torch.save's a */data.pkl (or archive/)."""
    np.savez(tmp_path / "z.npz", a=np.zeros((2, 3)), b=np.ones(3))
    (tmp_path / "z.npz").rename(tmp_path / "zz.npy")
    torch.save({"w": torch.zeros(2)}, tmp_path / "t.npy")
    with zipfile.ZipFile(tmp_path / "other.npy", "w") as archive:
        archive.writestr("hello.txt", "hi")
    npz = cli.error("run", "--input", tmp_path / "zz.npy", code=1)
    assert npz == (
        f"--input {tmp_path / 'zz.npy'}: a NumPy archive (numpy.savez: .npz, several arrays), "
        "not a .npy; save the array you want alone with numpy.save, e.g. "
        "numpy.save('x.npy', numpy.load(path)['name'])"
    )
    assert "a PyTorch file (torch.save), not a .npy" in cli.error(
        "run", "--input", tmp_path / "t.npy", code=1)  # fmt: skip
    assert cli.error("run", "--input", tmp_path / "other.npy", code=1).endswith(
        "a zip archive, neither a .npy nor a PyTorch file; save the array with numpy.save"
    )


@pytest.mark.parametrize(
    ("dtype", "advice"),
    [
        (np.bool_, "save it as float32"),
        (np.int16, "save it as float32"),
        (np.longdouble, "save it as float64"),
        (">f4", "save it in native byte order"),
    ],
)
def test_stats_only_advice_fits_the_dtype(cli, tmp_path, dtype, advice):
    if np.dtype(dtype) == np.dtype(np.float64):
        pytest.skip("long double is float64 on this platform")
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((2, 2, 3), dtype=dtype))
    message = cli.error("run", "--input", path, "--stats-only", code=2)
    assert message.endswith(f"; drop --stats-only (a full run converts it), or {advice}"), message


def test_allowed_non_finite_mismatches_are_said_as_such(cli, tmp_path):
    x = np.random.default_rng(0).standard_normal((5, 3, 4, 5)).astype(np.float32)
    y = torch.nn.functional.batch_norm(torch.from_numpy(x), None, None, training=True).numpy()
    y[0, 0, 0, 0] = np.nan  # the reference is finite there
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    args = ["check", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy"]
    doc = cli.json(*args, "--allow-nonfinite-mismatch")
    summary, count = doc["verdict"]["summary"]
    assert summary.startswith("PASS: ") and "given tolerance" not in summary, summary
    assert summary.endswith(
        "; 1 element NaN or infinite on one side only, allowed by --allow-nonfinite-mismatch"
    )
    assert count.startswith("299 of 300 elements within "), count
    assert count.endswith("; 1 NaN or infinite on one side only, allowed by "
                          "--allow-nonfinite-mismatch."), count  # fmt: skip
    given = cli.json(*args, "--allow-nonfinite-mismatch", "--atol", "1e-5", "--rtol", "0")
    assert given["verdict"]["summary"][1].startswith("299 of 300 elements within atol 1e-05")
    # NaN in both: an agreement, not an allowed mismatch (docs/check.md)
    y_both = y.copy()
    x_nan = x.copy()
    x_nan[0, 0, 0, 0] = np.nan
    y_both[:, 0] = np.nan  # NaN input makes the whole channel's reference NaN
    np.save(tmp_path / "xn.npy", x_nan)
    np.save(tmp_path / "yn.npy", y_both)
    both = cli.json("check", "--input", tmp_path / "xn.npy", "--output", tmp_path / "yn.npy")
    assert both["passed"] is True
    assert both["verdict"]["summary"][1].startswith("All 300 elements within"), both["verdict"]
