"""Option strings into data, and the exact messages for malformed ones."""

from __future__ import annotations

import pytest

from bninspect.errors import OptionError
from bninspect.input.parsing import (
    check_eps,
    check_momentum,
    parse_index,
    parse_shape,
    parse_vector_spec,
    resolve_index,
)


def test_parse_shape():
    assert parse_shape("1,2,3,4") == (1, 2, 3, 4)
    assert parse_shape(" 8, 3 ") == (8, 3)
    assert parse_shape("1,1,1,1,1") == (1, 1, 1, 1, 1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,,2", "--shape '1,,2': entry 1 is empty; give sizes like 1x2x3x4 or 1,2,3,4"),
        (
            "a,b",
            "--shape 'a,b': entry 0 ('a') is not an integer; give sizes like 1x2x3x4 or "
            "1,2,3,4",
        ),
        (
            "1,0,3",
            "--shape '1,0,3': size 0 at position 1 is not positive; every size must be at least 1",
        ),
        (
            "2,-3",
            "--shape '2,-3': size -3 at position 1 is not positive; every size must be at least 1",
        ),
        (
            "5",
            "--shape '5' has rank 1; batch norm takes rank 2 to 5, (N,C), (N,C,L), (N,C,H,W) "
            "or (N,C,D,H,W), with channels on axis 1",
        ),
        (
            "1,1,1,1,1,1",
            "--shape '1,1,1,1,1,1' has rank 6; batch norm takes rank 2 to 5, (N,C), "
            "(N,C,L), (N,C,H,W) or (N,C,D,H,W), with channels on axis 1",
        ),
        ("", "--shape '': entry 0 is empty; give sizes like 1x2x3x4 or 1,2,3,4"),
    ],
)
def test_parse_shape_errors(text, message):
    with pytest.raises(OptionError) as error:
        parse_shape(text)
    assert str(error.value) == message
    assert error.value.exit_code == 2


def test_resolve_index_counts_negatives_from_the_end():
    assert resolve_index(parse_index("0,-1,-3,3"), (1, 2, 3, 4)) == (0, 1, 0, 3)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "0,0,0",
            "--index 0,0,0 has 3 entries but the input has rank 4 (shape 1x2x3x4); give "
            "4 comma-separated integers",
        ),
        ("0,2,0,0", "--index 0,2,0,0: entry 1 is 2 but axis 1 has size 2; valid range is -2 to 1"),
        (
            "0,0,-4,0",
            "--index 0,0,-4,0: entry 2 is -4 but axis 2 has size 3; valid range is -3 to 2",
        ),
    ],
)
def test_resolve_index_errors(text, message):
    with pytest.raises(OptionError) as error:
        resolve_index(parse_index(text), (1, 2, 3, 4))
    assert str(error.value) == message


def test_parse_vector_spec_forms():
    assert parse_vector_spec("--weight", "ones").kind == "ones"
    assert parse_vector_spec("--weight", "random").kind == "random"
    spec = parse_vector_spec("--weight", "0.5653, 0.0322")
    assert spec.kind == "list" and spec.values == (0.5653, 0.0322)
    spec = parse_vector_spec("--bias", "dir/b.npy")
    assert spec.kind == "file" and spec.path == "dir/b.npy"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "0.5,x",
            "--weight '0.5,x': entry 1 ('x') is not a number; give ones, zeros, random, a "
            "comma list of one number per channel, or a .npy file",
        ),
        ("1,nan", "--weight '1,nan': entry 1 is nan; values must be finite"),
        ("inf", "--weight 'inf': entry 0 is inf; values must be finite"),
    ],
)
def test_parse_vector_spec_errors(text, message):
    with pytest.raises(OptionError) as error:
        parse_vector_spec("--weight", text)
    assert str(error.value) == message


@pytest.mark.parametrize("eps", [-1e-5, float("nan"), float("inf")])
def test_bad_eps(eps):
    with pytest.raises(OptionError, match="--eps .*: must be a finite number >= 0"):
        check_eps(eps)


@pytest.mark.parametrize("momentum", [-0.1, 1.5, float("nan")])
def test_bad_momentum(momentum):
    with pytest.raises(OptionError, match=r"--momentum .*: must lie in \[0, 1\]"):
        check_momentum(momentum)


def test_good_eps_and_momentum_pass_through():
    assert check_eps(0.0) == 0.0 and check_momentum(0.0) == 0.0 and check_momentum(1.0) == 1.0
