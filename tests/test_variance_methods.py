"""run --var-method: the classic trap, on real numbers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bninspect.numerics import kernels, variance_methods
from bninspect.numerics.kernels import Region
from bninspect.numerics.reference import channel_statistics
from bninspect.numerics.variance_methods import compare_variance_methods


def test_naive_formula_fails_at_a_large_offset_and_two_pass_does_not():
    x = (np.random.default_rng(0).standard_normal((32, 8, 64, 64)) + 1e4).astype(np.float32)
    methods = compare_variance_methods(x, channel_statistics(x))
    assert all(m.working_precision == "float32" for m in methods)
    # E[x^2] ~ 1e8 has float32 spacing 8: the difference of two such numbers is a multiple of
    # 8, nowhere near the true ~1.0, and negative for some channels.
    assert all(m.naive % 8 == 0 for m in methods)
    assert any(m.naive < 0 for m in methods)
    assert all(abs(m.two_pass_rel_error) < 1e-5 for m in methods)
    assert all(abs(m.welford_rel_error) < 1e-2 for m in methods)


def test_all_methods_agree_on_benign_float64_data():
    x = np.random.default_rng(1).standard_normal((10, 3, 20))
    methods = compare_variance_methods(x, channel_statistics(x))
    for m in methods:
        expected = x[:, m.channel].var()
        for value in (m.reference, m.two_pass, m.naive, m.welford):
            np.testing.assert_allclose(value, expected, rtol=1e-12)


def test_cli_table_and_json(cli):
    doc = cli.json("run", "--shape", "32,2,16,16", "--offset", "1e4", "--var-method")
    assert [m["channel"] for m in doc["variance_methods"]] == [0, 1]
    assert set(doc["variance_methods"][0]) == {
        "channel",
        "working_precision",
        "reference",
        "two_pass",
        "two_pass_rel_error",
        "naive",
        "naive_rel_error",
        "welford",
        "welford_rel_error",
    }
    table = cli("run", "--var-method").stdout
    assert "Variance in float32 three ways" in table
    assert "naive E[x^2]-E[x]^2" in table  # a literal label, not swallowed as rich markup


@given(
    shape=st.lists(st.integers(1, 5), min_size=2, max_size=4).map(tuple),
    group=st.integers(1, 64),
    dtype=st.sampled_from([np.float16, np.float32, np.float64]),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_channel_grouping_gives_the_whole_array_methods(shape, group, dtype, seed):
    """Copying channels in groups, row by row, gives each method's value computed on the
    whole array, and every row of every group is handed back for release."""
    x = (np.random.default_rng(seed).standard_normal(shape) * 3 + 50).astype(dtype)
    working = np.float64 if dtype == np.float64 else np.float32
    released: list[Region] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(variance_methods, "GROUP_ELEMENTS", group)
        methods = compare_variance_methods(x, channel_statistics(x), released.append)
    welford = kernels.welford(x, np.dtype(dtype).name)  # the kernel over the whole array
    for m in methods:
        values = x[:, m.channel].reshape(-1).astype(working)
        mean = values.sum(dtype=working) / working(values.size)
        two_pass = ((values - mean) ** 2).sum(dtype=working) / working(values.size)
        assert m.two_pass == float(two_pass)
        assert m.welford == float(welford[m.channel, 1])
    N, C = shape[0], shape[1]
    S = x.size // (N * C)
    groups = -(-C // max(1, group // (N * S)))
    assert released == [Region(n, n + 1, 0, C, 0, S) for _ in range(groups) for n in range(N)]


def test_the_cancel_legend_points_to_var_method_until_it_is_given(cli):
    """The issue's command, without --var-method, must lead to the naive variance's failure."""
    args = ("run", "--shape", "4,2,64", "--offset", "1e4")
    legend = cli.json(*args)["flag_legend"]["cancel"]
    assert legend.endswith("add --var-method to see what it does to the naive one-pass variance")
    doc = cli.json(*args, "--var-method")
    assert "--var-method" not in doc["flag_legend"]["cancel"]
    assert any(
        m["naive_rel_error"] is None or abs(m["naive_rel_error"]) > 0.5
        for m in doc["variance_methods"]
    )
