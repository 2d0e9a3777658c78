"""``run --ranks``, ``explain --ranks`` and ``run --stats-only`` on many files, end to end in
real ranks, against numbers computed here; torchrun's env:// rendezvous; and the faults: a rank
that raises, one killed, one that hangs, a bad file on one rank. Each ends with one clear
error, within a bounded time, leaving no process, no socket beyond loopback and no file."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent
WORKER = "bninspect.distributed.worker"
TAG = "BNINSPECT_TEST_TAG"


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """Launches in this process make their directories here, so a test sees what is left; the
    ranks they start carry this test's tag in their environment, so a test counts only its own
    (other test runs on the machine may have ranks alive at the same moment)."""
    folder = tmp_path / "launches"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setenv(TAG, f"{os.getpid()}-{tmp_path.name}")
    return folder


def workers(parent: int | None = None) -> dict[int, list[str]]:
    """The rank processes alive now (children of ``parent`` if given): pid -> command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        words = [c.decode(errors="replace") for c in command if c]
        state, ppid = stat.rsplit(") ", 1)[1].split()[:2]
        if WORKER in words and state != "Z" and (parent is None or int(ppid) == parent):
            if _tagged(entry):
                found[int(entry.name)] = words
    return found


def _tagged(entry: Path) -> bool:
    """Whether the process carries this test's tag (any process, outside a tagged test)."""
    tag = os.environ.get(TAG)
    if tag is None:
        return True
    try:
        environ = (entry / "environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"{TAG}={tag}".encode() in environ


def assert_nothing_left(folder: Path, before: dict[int, list[str]]):
    assert list(folder.iterdir()) == [], list(folder.iterdir())
    strays = set(workers()) - set(before)
    assert not strays, strays


def data(shape=(6, 2, 3, 3), seed=1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 2 + rng.standard_normal((shape[0],) + (1,) * (len(shape) - 1))
    return x.astype(np.float32)


def blocks(sizes):
    first = 0
    for size in sizes:
        yield first, first + size
        first += size


def test_run_split_by_hand(cli, tmp_path, private_tmp):
    """run --rank-sizes 2,0,3,1: every regime's figures against a computation here, and the
    ranks' stitched output (--save-output) against PyTorch's module on each block."""
    x, sizes = data(), (2, 0, 3, 1)
    np.save(tmp_path / "x.npy", x)
    # the layer's vectors as the float32 module holds them
    weight, bias = np.array([0.5, 2.0]), np.array([0.1, -0.3], np.float32).astype(np.float64)
    rm0, rv0, m, eps = float(np.float32(0.2)), 1.5, 0.2, 1e-5
    before = workers()
    doc = cli.json(
        "run", "--input", tmp_path / "x.npy", "--rank-sizes", "2,0,3,1", "--weight", "0.5,2",
        "--bias", "0.1,-0.3", "--running-mean", "0.2,0.2", "--running-var", "1.5,1.5",
        "--momentum", "0.2", "--save-output", tmp_path / "y.npy",
    )  # fmt: skip
    assert_nothing_left(private_tmp, before)
    assert doc["verdict"]["status"] == "agrees", doc["verdict"]
    # torch.nn.SyncBatchNorm itself was tried in the ranks' group, and refused CPU tensors
    assert "SyncBatchNorm expected input tensor to be on GPU" in doc["verified"]
    assert all(check["passed"] for check in doc["checks"]), doc["checks"]
    wide = x.astype(np.float64)
    axes, shape = (0, 2, 3), (1, -1, 1, 1)
    mean, var = wide.mean(axis=axes), wide.var(axis=axes)

    def bn(values, mu, variance):
        y = (values - mu.reshape(shape)) / np.sqrt(variance.reshape(shape) + eps)
        return y * weight.reshape(shape) + bias.reshape(shape)

    full = bn(wide, mean, var)
    scale = np.maximum(np.abs(full).max(axis=axes), np.abs(weight))
    own, shifts, torch_parts = [], [], []
    for first, end in blocks(sizes):
        block = wide[first:end]
        if end == first:
            own.append((np.full(2, rm0), np.full(2, rv0)))  # nothing folded in
            continue
        bm, bv = block.mean(axis=axes), block.var(axis=axes)
        own.append(((1 - m) * rm0 + m * bm, (1 - m) * rv0 + m * block.var(axis=axes, ddof=1)))
        shifts.append(np.abs(bn(block, bm, bv) - full[first:end]).max(axis=axes) / scale)
        module = torch.nn.BatchNorm2d(2, momentum=m)
        with torch.no_grad():
            module.weight.copy_(torch.tensor(weight)), module.bias.copy_(torch.tensor(bias))
            module.running_mean.fill_(rm0), module.running_var.fill_(rv0)
            torch_parts.append(module(torch.from_numpy(x[first:end])).numpy())
    # --save-output: the ranks' outputs in rank order, bit for bit PyTorch's on each block
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), np.concatenate(torch_parts))

    for k, channel in enumerate(doc["channels"]):
        assert channel["mean"] == pytest.approx(mean[k], rel=1e-12)
        no_sync = max(s[k] for s in shifts)
        assert channel["no_sync_max_shift"] == pytest.approx(no_sync, rel=1e-5)
        averaged_var = sum(
            (end - first) * 9 * wide[first:end, k].var()
            for first, end in blocks(sizes)
            if end > first
        ) / (6 * 9)
        y_avg = bn(wide, mean, np.where(np.arange(2) == k, averaged_var, var))[:, k]
        expected = np.abs(y_avg - full[:, k]).max() / scale[k]
        # a shift is a difference of close outputs: its rounding is relative to the scale
        assert channel["averaged_max_shift"] == pytest.approx(expected, abs=1e-12)
        # the plain mistake: the non-empty ranks' variances, each weighing 1/3
        equal_var = np.mean(
            [wide[first:end, k].var() for first, end in blocks(sizes) if end > first]
        )
        assert channel["equal_weight_var"] == pytest.approx(equal_var, rel=1e-12)
        y_equal = bn(wide, mean, np.where(np.arange(2) == k, equal_var, var))[:, k]
        expected = np.abs(y_equal - full[:, k]).max() / scale[k]
        assert channel["equal_weight_max_shift"] == pytest.approx(expected, abs=1e-12)

    running = ((1 - m) * rm0 + m * mean, (1 - m) * rv0 + m * wide.var(axis=axes, ddof=1))

    def eval_out(buffers):
        return bn(wide, buffers[0], buffers[1])

    y_eval = eval_out(running)
    eval_scale = np.maximum(np.abs(y_eval).max(axis=axes), np.abs(weight))
    averaged = (np.mean([o[0] for o in own], axis=0), np.mean([o[1] for o in own], axis=0))
    for k, buffer in enumerate(doc["buffers"]):
        assert buffer["running_var"] == pytest.approx(running[1][k], rel=1e-12)
        assert buffer["broadcast_running_var"] == pytest.approx(own[0][1][k], rel=1e-12)
        assert buffer["averaged_running_var"] == pytest.approx(averaged[1][k], rel=1e-12)
        for name, buffers in (("broadcast", own[0]), ("averaged", averaged)):
            expected = np.abs(eval_out(buffers)[:, k] - y_eval[:, k]).max() / eval_scale[k]
            assert buffer[f"{name}_eval_shift"] == pytest.approx(expected, abs=1e-12), name
        # SyncBatchNorm's update with the equal-weight variance (global Bessel factor 54/53)
        equal_var = np.mean(
            [wide[first:end, k].var() for first, end in blocks(sizes) if end > first]
        )
        equal_rv = (1 - m) * rv0 + m * equal_var * 54 / 53
        assert buffer["equal_weight_running_var"] == pytest.approx(equal_rv, rel=1e-12)
        y_equal = (wide[:, k] - running[0][k]) / np.sqrt(equal_rv + eps) * weight[k] + bias[k]
        expected = np.abs(y_equal - y_eval[:, k]).max() / eval_scale[k]
        assert buffer["equal_weight_eval_shift"] == pytest.approx(expected, abs=1e-12)
        worst = max(np.abs(eval_out(o)[:, k] - y_eval[:, k]).max() / eval_scale[k] for o in own)
        assert buffer["own_eval_shift"] == pytest.approx(worst, abs=1e-12)
    ranks = doc["rank_reports"]
    assert [(r["first_sample"], r["samples"], r["count"]) for r in ranks] == [
        (0, 2, 18), (2, 0, 0), (2, 3, 27), (5, 1, 9),
    ]  # fmt: skip
    assert ranks[1]["channels"][0]["mean"] is None
    assert "rank 1 holds no samples" in doc["null_reasons"]["/rank_reports/1/channels/0/mean"]


def test_run_fits_80_columns_and_leads_with_the_verdict(cli, tmp_path, monkeypatch, private_tmp):
    monkeypatch.setenv("COLUMNS", "80")
    result = cli("run", "--ranks", "2", "--shape", "4,3,2,2")
    lines = result.stdout.splitlines()
    assert lines[0].startswith("SyncBatchNorm over 2 ranks reproduces the full batch (")
    assert lines[1].startswith("without sync, rank ")
    assert lines[2] == ""  # the answer in two lines, then the rest
    assert max(map(len, lines)) <= 80, [line for line in lines if len(line) > 80]
    quiet = cli("run", "--ranks", "2", "--shape", "4,3,2,2", "-q").stdout
    assert quiet.splitlines() == lines[:2]


def test_one_rank_speaks_of_no_split_effect(cli, monkeypatch, private_tmp):
    """--ranks 1: one rank, one process, and no 'without sync' effect (there is none)."""
    monkeypatch.setenv("COLUMNS", "80")
    out = cli("run", "--ranks", "1", "--shape", "4,3,2,2").stdout
    assert out.splitlines()[:2] == [
        out.splitlines()[0],
        "with one rank, DDP without sync and its buffer broadcast are the full batch",
    ]
    assert out.startswith("SyncBatchNorm over 1 rank reproduces the full batch (")
    assert "1 local process," in out and "1 ranks" not in out and "1 local processes" not in out
    assert "without sync, rank" not in out and "Train-mode output shift" not in out
    assert "Eval-mode output shift" not in out and "One rank: " in out


def test_explain_by_hand(cli, tmp_path, private_tmp):
    x, eps = data((7, 2, 3, 3), seed=4), 1e-5
    np.save(tmp_path / "x.npy", x)
    doc = cli.json(
        "explain", "--input", tmp_path / "x.npy", "--rank-sizes", "3,4", "--index", "4,1,0,2"
    )
    assert (doc["rank"], doc["local_index"], doc["channel"]) == (1, [1, 1, 0, 2], 1)
    wide = x.astype(np.float64)
    element = wide[4, 1, 0, 2]
    full = wide[:, 1]
    block = wide[3:7, 1]
    regimes = {r["regime"]: r for r in doc["regimes"]}
    expected = {
        "full batch": (element - full.mean()) / np.sqrt(full.var() + eps),
        "SyncBatchNorm": (element - full.mean()) / np.sqrt(full.var() + eps),
        "rank 1 alone": (element - block.mean()) / np.sqrt(block.var() + eps),
        "var averaged": (element - full.mean())
        / np.sqrt((3 * wide[0:3, 1].var() + 4 * block.var()) / 7 + eps),
        "var equal": (element - full.mean())
        / np.sqrt((wide[0:3, 1].var() + block.var()) / 2 + eps),
    }
    for name, value in expected.items():
        assert regimes[name]["reference"] == pytest.approx(value, rel=1e-12, abs=1e-12), name
    # PyTorch's value on rank 1's block, computed here
    with torch.no_grad():
        mine = torch.nn.BatchNorm2d(2)(torch.from_numpy(x[3:7]))[1, 1, 0, 2].item()
    assert regimes["rank 1 alone"]["torch"] == mine
    assert doc["verdict"]["status"] == "within-rounding"
    assert doc["verdict"]["summary"][0].startswith("rank 1 alone gives ")


def shards(folder: Path) -> list[np.ndarray]:
    """Uneven files: different batch and spatial sizes, three dtypes, the same 3 channels."""
    rng = np.random.default_rng(11)
    arrays = []
    for k, (n, h, dtype) in enumerate(
        [(3, 4, np.float32), (1, 4, np.float32), (7, 2, np.float64), (2, 5, np.float32),
         (5, 4, np.float16), (1, 1, np.float32), (4, 3, np.float64), (6, 4, np.float32),
         (2, 2, np.float32)]
    ):  # fmt: skip
        x = (rng.standard_normal((n, 3, h, h)) * 3 + 10).astype(dtype)
        np.save(folder / f"part{k:02d}.npy", x)
        arrays.append(x)
    return arrays


def test_population_statistics_one_process_ranks_and_by_hand(cli, tmp_path, private_tmp):
    arrays = shards(tmp_path)
    pattern = str(tmp_path / "part*.npy")
    one = cli.json("run", "--stats-only", "--input", pattern)
    before = workers()
    ranked = cli.json("run", "--stats-only", "--input", pattern, "--ranks", "3")
    assert_nothing_left(private_tmp, before)
    values = np.concatenate(
        [np.moveaxis(a.astype(np.float64), 1, 0).reshape(3, -1) for a in arrays], axis=1
    )
    assert one["ranks"] == 1 and ranked["ranks"] == 3 and ranked["files"] == 9
    assert [f for s in ranked["shares"] for f in s["files"]] == sorted(
        str(p) for p in tmp_path.glob("part*.npy")
    )
    for a, b, k in zip(one["channels"], ranked["channels"], range(3), strict=True):
        assert a["count"] == b["count"] == values.shape[1]
        for name in ("mean", "var_biased", "var_unbiased"):
            assert abs(a[name] - b[name]) <= 2 * np.spacing(abs(a[name])), name
        # numpy's float64 pairwise sums: within a few units of the exact values
        assert a["mean"] == pytest.approx(values[k].mean(), rel=1e-14)
        assert a["var_unbiased"] == pytest.approx(values[k].var(ddof=1), rel=1e-13)
    assert one["verdict"]["status"] == ranked["verdict"]["status"] == "statistics"
    assert ranked["dtypes"] == ["float16", "float32", "float64"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_torchrun_uses_the_environment_s_rendezvous(cli, tmp_path):
    """Under torchrun each rank reads its share, the ranks gather over env://, and rank 0 alone
    prints: the same statistics as one process."""
    shards(tmp_path)
    pattern = str(tmp_path / "part*.npy")
    one = cli.json("run", "--stats-only", "--input", pattern)
    # torchrun's agent leaves a torchelastic_* log folder in the temporary directory: this test's.
    (tmp_path / "tmp").mkdir()
    environment = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "TMPDIR": str(tmp_path / "tmp")}
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [
        str(torchrun), "--nnodes", "1", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
        "--master-port", str(free_port()), "-m", "bninspect", "run", "--stats-only",
        "--input", pattern, "--json",
    ]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, env=environment, timeout=180
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)  # one document: rank 0's
    assert doc["ranks"] == 2 and doc["launcher"].startswith("torchrun: 2 ranks, env://")
    for a, b in zip(one["channels"], doc["channels"], strict=True):
        for name in ("count", "mean", "var_biased", "var_unbiased"):
            assert abs(a[name] - b[name]) <= 2 * np.spacing(abs(a[name])), name


# faults


def test_a_rank_that_raises_ends_the_run(cli, monkeypatch, private_tmp):
    monkeypatch.setenv("BNINSPECT_TEST_FAULT", "1:raise")
    before, start = workers(), time.monotonic()
    message = cli.error("run", "--ranks", "2", "--shape", "4,2", code=1)  # batch regimes
    assert time.monotonic() - start < 60
    assert message.startswith(
        "rank 1 of 2 failed: RuntimeError: fault injected by BNINSPECT_TEST_FAULT on rank 1"
    ), message
    assert_nothing_left(private_tmp, before)


def test_a_bad_file_on_one_rank_ends_the_run(cli, tmp_path, private_tmp):
    for k in range(4):
        np.save(tmp_path / f"part{k}.npy", np.ones((2, 3), np.float32))
    bad = tmp_path / "part3.npy"
    bad.write_bytes(bad.read_bytes()[:-8])  # truncated: rank 1 streams the last files
    before = workers()
    message = cli.error(
        "run", "--stats-only", "--input", str(tmp_path / "part*.npy"), "--ranks", "2", code=1
    )
    assert message.startswith(f"rank 1 of 2 failed: --input {bad}: truncated"), message
    assert_nothing_left(private_tmp, before)


def test_a_hung_rank_is_ended_by_the_timeout(cli, tmp_path, monkeypatch, private_tmp):
    for k in range(2):
        np.save(tmp_path / f"part{k}.npy", np.ones((2, 3), np.float32))
    monkeypatch.setenv("BNINSPECT_TEST_FAULT", "1:hang")
    before, start = workers(), time.monotonic()
    message = cli.error(
        "run", "--stats-only", "--input", str(tmp_path / "part*.npy"), "--ranks", "2",
        "--rank-timeout", "2", code=1,
    )  # fmt: skip
    assert time.monotonic() - start < 90
    assert message.startswith("rank 1 of 2 did not answer: rank 0 of 2 gave up waiting"), message
    assert_nothing_left(private_tmp, before)


def sockets(pid: int) -> list[tuple[str, str]]:
    """(local, remote) addresses of the TCP sockets process ``pid`` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if found := re.fullmatch(r"socket:\[(\d+)\]", target):
            inodes.add(found.group(1))
    pairs = []
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                pairs.append(tuple(_address(fields[k], width) for k in (1, 2)))
    return pairs


def _address(text: str, width: int) -> str:
    """An address of /proc/net/tcp* (little-endian 32-bit words in hex) as text."""
    hexes, _ = text.split(":")
    words = [int(hexes[k : k + 8], 16) for k in range(0, width, 8)]
    packed = b"".join(word.to_bytes(4, "little") for word in words)
    return str(ipaddress.ip_address(packed))


def loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback) or ip.is_unspecified


def test_a_killed_rank_ends_the_run_and_ranks_bind_loopback_only(tmp_path):
    """While the ranks hold their gloo connections (rank 1 hangs, rank 0 waits for it), every
    socket either holds is bound and connected on 127.0.0.0/8; killing rank 1 ends the run with
    an error naming it, leaving no process and no file."""
    launches = tmp_path / "launches"
    launches.mkdir()
    for k in range(2):
        np.save(tmp_path / f"part{k}.npy", np.ones((2, 3), np.float32))
    environment = {**os.environ, "BNINSPECT_TEST_FAULT": "1:hang", "TMPDIR": str(launches)}
    command = [
        sys.executable, "-m", "bninspect", "run", "--stats-only", "--input",
        str(tmp_path / "part*.npy"), "--ranks", "2",
    ]  # fmt: skip
    run = subprocess.Popen(
        command, cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline, seen = time.monotonic() + 120, {}
        while time.monotonic() < deadline:
            ranks = workers(run.pid)
            seen = {pid: sockets(pid) for pid in ranks}
            if len(ranks) == 2 and all(len(found) >= 2 for found in seen.values()):
                break
            time.sleep(0.1)
        assert len(seen) == 2 and all(seen.values()), seen  # both ranks hold connections
        for pid, pairs in seen.items():
            for local, remote in pairs:
                assert loopback(local) and loopback(remote), (pid, local, remote)
        rank_of = {pid: int(words[words.index(WORKER) + 2]) for pid, words in ranks.items()}
        hung = next(pid for pid, rank in rank_of.items() if rank == 1)
        os.kill(hung, signal.SIGKILL)
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 1 and out == "", err
    assert err.startswith("Error: rank 1 of 2 died (killed by SIGKILL) before finishing"), err
    assert err.count("\n") == 1
    for pid in rank_of:
        assert not Path(f"/proc/{pid}").exists() or pid not in workers()
    assert list(launches.iterdir()) == []


def test_rendering_needs_no_terminal_width_beyond_80(tmp_path):
    """The population table at 80 columns (rendered from a result, no ranks needed)."""
    from bninspect.distributed.files import build_population_result
    from bninspect.distributed.population import population
    from bninspect.render.screen import render

    shards(tmp_path)
    files = sorted(tmp_path.glob("part*.npy"))
    result = build_population_result(population(files, "x"), files, "x", "one process")
    with open(os.devnull, "w") as sink:
        console = Console(width=80, record=True, file=sink)
        console.print(render(result, width=80))
    lines = console.export_text().splitlines()
    assert lines[0].startswith("3 channels of 363 values each, from 9 files (")
    assert max(map(len, lines)) <= 80


@pytest.mark.parametrize("ranks", [(), ("--ranks", "2")])
def test_a_directory_as_stats_only_input_is_refused_with_its_pattern(cli, tmp_path, ranks):
    """A directory is not read whole (a --save-output beside the shards would join them): one
    line saying which quoted pattern names its files, exit 1, before any rank starts."""
    shards(tmp_path)
    message = cli.error("run", "--stats-only", "--input", tmp_path, *ranks, code=1)
    assert message.count("\n") <= 1, message
    assert f"--input {tmp_path}: is a directory;" in message
    assert f"quoted pattern: --input '{tmp_path / '*.npy'}'" in message


def test_population_counts_agree_with_their_nouns(tmp_path):
    """One channel holding NaN, one file: 'channel 1 holds', '1 file', never '1 files'."""
    from bninspect.distributed.files import build_population_result
    from bninspect.distributed.population import population

    x = np.ones((2, 3, 2), np.float32)
    x[0, 1, 0] = np.nan
    np.save(tmp_path / "one.npy", x)
    files = [tmp_path / "one.npy"]
    result = build_population_result(population(files, "x"), files, "x", "one process")
    line = result.verdict.summary[0]
    assert line.startswith("3 channels of 4 values each, from 1 file ("), line
    assert line.endswith(": channel 1 holds NaN or Inf, so its statistics are not finite")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("run", "--ranks", "2", "--grad"), "--grad inspects one process's batch norm; --ranks "
         "splits the forward pass and the running buffers over ranks, not the backward pass "
         "(whose sums are all-reduced across ranks): drop --grad or --ranks"),
        (("run", "--rank-sizes", "4,4", "--var-method"), "--var-method inspects one process's "
         "batch norm; --rank-sizes splits the forward pass and the running buffers over ranks: "
         "drop --var-method or --rank-sizes"),
        (("explain", "--ranks", "2", "--index", "1,1", "--precision", "--grad"), "--precision "
         "and --grad inspect one process's batch norm; --ranks splits the forward pass and the "
         "running buffers over ranks, not the backward pass (whose sums are all-reduced across "
         "ranks): drop --precision and --grad or --ranks"),
    ],
)  # fmt: skip
def test_one_process_options_with_ranks_are_refused_by_name(cli, args, expected):
    """Only the options given are named, and --grad's refusal says what the split covers."""
    assert cli.error(*args, "--shape", "8,3", code=2) == expected
