"""check's whole-tensor passes go channel chunk by chunk: the same report whatever the chunk size
(against plain whole-array numpy), and a peak memory memory.check_bytes does not undercount."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bninspect.check import compare as check_compare
from bninspect.check.compare import (
    absolute_errors,
    histogram,
    largest_errors,
    mismatched,
    relative_error,
    ulp_error,
    worst_indices,
)
from bninspect.input.memory import check_bytes
from bninspect.results.check import Tolerance


def _errors(draw_seed: int, shape, ties: bool):
    rng = np.random.default_rng(draw_seed)
    reference = rng.standard_normal(shape)
    theirs = reference + rng.standard_normal(shape) * 1e-6
    if ties:  # many equal errors, and exact elements: the order among equals matters
        theirs = reference + np.round(rng.standard_normal(shape)) * 1e-3
    theirs.flat[:: max(1, theirs.size // 7)] = reference.flat[:: max(1, theirs.size // 7)]
    return theirs, reference


@given(
    seed=st.integers(0, 2**32 - 1),
    shape=st.lists(st.integers(1, 6), min_size=2, max_size=4).map(tuple),
    chunk=st.integers(1, 64),
    top=st.integers(1, 40),
    ties=st.booleans(),
)
def test_chunked_passes_equal_whole_array_numpy(seed, shape, chunk, top, ties):
    """Every chunked pass gives what one numpy expression over the whole arrays gives."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(check_compare, "CHUNK_ELEMENTS", chunk)
        _chunked_passes_equal_whole_array_numpy(seed, shape, top, ties)


def _chunked_passes_equal_whole_array_numpy(seed, shape, top, ties):
    theirs, reference = _errors(seed, shape, ties)
    dtype = "float32"
    abs_error = absolute_errors(theirs, reference, dtype)
    np.testing.assert_array_equal(abs_error, np.abs(theirs - reference))
    order = worst_indices(abs_error, top)
    np.testing.assert_array_equal(order, np.argsort(-abs_error, axis=None, kind="stable")[:top])
    found = largest_errors(abs_error, reference, dtype)
    assert found["abs"] == int(np.argmax(abs_error))
    assert found["rel"] == int(np.argmax(relative_error(abs_error, reference)))
    assert found["ulp"] == int(np.argmax(ulp_error(abs_error, reference, dtype)))
    tolerance = Tolerance(1e-6, 1e-5, "given")
    bound = tolerance.atol + tolerance.rtol * np.abs(reference)
    np.testing.assert_array_equal(mismatched(abs_error, reference, tolerance), abs_error > bound)
    bins = histogram(abs_error)
    assert sum(b.count for b in bins) == abs_error.size
    assert bins[0].count == int((abs_error == 0).sum())
    for b in bins[2:-1]:
        assert b.count == int(((abs_error >= b.lower) & (abs_error < b.upper)).sum())


def test_the_largest_errors_first_of_equals(monkeypatch):
    """np.argmax's rules across chunks: the first of equal maxima, infinite ones too."""
    monkeypatch.setattr(check_compare, "CHUNK_ELEMENTS", 2)
    abs_error = np.zeros((2, 3, 2))
    abs_error[1, 0, 1] = abs_error[0, 2, 0] = 5.0  # flat 7 and 4: 4 comes first
    reference = np.ones_like(abs_error)
    assert largest_errors(abs_error, reference, "float32")["abs"] == 4
    abs_error[1, 1, 1] = abs_error[0, 1, 1] = np.inf  # flat 9 and 3
    assert largest_errors(abs_error, reference, "float32") == {"abs": 3, "rel": 3, "ulp": 3}


@pytest.mark.parametrize("chunk", [1 << 12, 1 << 22])
def test_check_peak_memory_is_within_its_estimate(cli, tmp_path, monkeypatch, chunk):
    """The peak numpy memory of a whole check (traced; torch's own is not, and the estimate
    counts PyTorch's output besides) stays under memory.check_bytes, and not far under it:
    the up-front refusal neither lets a check through that cannot fit nor refuses one that
    needs half of what it says."""
    monkeypatch.setattr(check_compare, "CHUNK_ELEMENTS", chunk)
    shape = (4, 16, 64, 64)
    x = (np.random.default_rng(0).standard_normal(shape) * 2 + 1).astype(np.float32)
    mine = torch.nn.functional.batch_norm(
        torch.from_numpy(x),
        None,
        None,
        training=True,
        eps=1e-3,  # a mistake to diagnose
    ).numpy()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "mine.npy", mine)
    args = ("check", "--input", tmp_path / "x.npy", "--output", tmp_path / "mine.npy")
    cli(*args, code=3)  # once before measuring: the modules it imports are not the arrays
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        cli(*args, code=3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    estimate = check_bytes(shape, 4, chunk_elements=chunk)
    assert 0.5 * estimate < peak - start <= estimate, (peak - start, estimate)


def test_a_check_that_cannot_fit_is_refused_before_any_work(cli, tmp_path, monkeypatch):
    """The input alone fits (run would go on), check's arrays do not: refused in one line."""
    x = np.zeros((2, 3, 8, 8), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "mine.npy", x)
    need = check_bytes(x.shape, 4)
    monkeypatch.setattr("bninspect.input.memory.available_bytes", lambda: need - 1)
    message = cli.error(
        "check", "--input", tmp_path / "x.npy", "--output", tmp_path / "mine.npy", code=1
    )
    assert message.startswith(f"check on --input {tmp_path / 'x.npy'} (2x3x8x8 float32) needs")
    assert "save the first samples" in message
