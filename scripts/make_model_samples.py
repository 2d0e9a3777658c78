"""Write the model samples in samples/ from samples/tiny_net.py (run from anywhere):

    python scripts/make_model_samples.py

- tiny_net_state.pt: the state_dict of TinyNet trained 60 SGD steps (torch.save), for
  `bninspect model --model samples/tiny_net.py:make_net --weights samples/tiny_net_state.pt`
- tiny_net.pt2: the same network in eval mode, exported (torch.export.save), for
  `bninspect model --program samples/tiny_net.pt2`
- tiny_batches/: three .npy batches of its data (float32), for population statistics.

The training is the tests' (tests/model_scenarios.py), so the files match what they check.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
sys.path.insert(0, str(ROOT / "tests"))

import model_scenarios as scenarios  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    net = scenarios.trained()
    torch.save(net.state_dict(), SAMPLES / "tiny_net_state.pt")
    torch.export.save(scenarios.exported(net), SAMPLES / "tiny_net.pt2")
    folder = SAMPLES / "tiny_batches"
    folder.mkdir(exist_ok=True)
    for k, size in enumerate((64, 64, 32)):
        np.save(folder / f"batch{k}.npy", scenarios.batch(40 + k, size).numpy())
    for path in sorted([*SAMPLES.glob("tiny_net*"), *folder.iterdir()]):
        print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
