"""Measure how often grad/cpu_backward.py reproduces autograd's dx, dweight and dbias bit for
bit, per dtype, mode and kernel path, over random shapes and values; print the counts.

    python scripts/measure_grad_emulation.py [--trials 200] [--seed 0]

The claims in bninspect/grad/precision.py quote this script's output (torch 2.13, AVX512, 2
threads). Run it again after a torch upgrade or on another CPU before trusting them there.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from bninspect.grad.cpu_backward import emulate_channel_backward, emulate_grad_input

MODULES = {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    threads = torch.get_num_threads()
    counts: dict[tuple, list[int]] = {}
    for trial in range(args.trials):
        dtype = ("float32", "float64")[trial % 2]
        train = trial % 4 < 2
        rank = int(rng.integers(2, 6))
        shape = [int(v) for v in rng.integers(1, 7, size=rank)]
        shape[0] = max(2, shape[0])
        scale, offset = rng.choice([0.1, 1.0, 5.0]), rng.choice([0.0, 2.0])
        x = (rng.standard_normal(shape) * scale + offset).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        C = shape[1]
        w = rng.uniform(-2, 2, C).astype(dtype)
        rm = rng.standard_normal(C).astype(dtype)
        rv = rng.uniform(0.5, 2, C).astype(dtype)
        module = getattr(torch.nn, MODULES[rank])(C).to(getattr(torch, dtype))
        with torch.no_grad():
            module.weight.copy_(torch.from_numpy(w))
            module.running_mean.copy_(torch.from_numpy(rm))
            module.running_var.copy_(torch.from_numpy(rv))
        module.train(train)
        xt = torch.from_numpy(x.copy()).requires_grad_(True)
        module(xt).backward(torch.from_numpy(dy))
        if train:  # the forward's saved statistics, as the backward reads them
            _, saved_mean, saved_invstd = torch.ops.aten.native_batch_norm(
                torch.from_numpy(x), torch.from_numpy(w), None, None, None, True, 0.1, 1e-5
            )
            mean, invstd = saved_mean.numpy(), saved_invstd.numpy()
        else:
            mean, invstd = rm, np.zeros(C, dtype)
        image = int(np.prod(shape[2:])) if rank > 2 else 1
        dx_t, dw_t, db_t = xt.grad.numpy(), module.weight.grad.numpy(), module.bias.grad.numpy()
        for c in range(C):
            xc = x[:, c].reshape(shape[0], image)
            dyc = dy[:, c].reshape(shape[0], image)
            ch = emulate_channel_backward(
                xc, dyc, dtype, float(mean[c]), float(invstd[c]), train, float(rv[c]), 1e-5,
                threads,
            )  # fmt: skip
            key = (dtype, "train" if train else "eval", ch.path)
            tally = counts.setdefault(key, [0, 0, 0, 0, 0])
            torch_dx = dx_t[:, c].reshape(shape[0], image)
            for n in range(shape[0]):
                for i in range(image):
                    dx = emulate_grad_input(float(xc[n, i]), float(dyc[n, i]), ch, float(w[c]),
                                            train, dtype)  # fmt: skip
                    tally[0] += dx == float(torch_dx[n, i])
                    tally[1] += 1
            tally[2] += ch.grad_weight == float(dw_t[c])
            tally[3] += ch.grad_bias == float(db_t[c])
            tally[4] += 1
    print(f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, "
          f"{threads} threads, {args.trials} trials, seed {args.seed}")  # fmt: skip
    for (dtype, mode, path), t in sorted(counts.items()):
        print(f"{dtype} {mode:5} {path}: dx {t[0]}/{t[1]}, dweight {t[2]}/{t[4]}, "
              f"dbias {t[3]}/{t[4]}")  # fmt: skip


if __name__ == "__main__":
    main()
