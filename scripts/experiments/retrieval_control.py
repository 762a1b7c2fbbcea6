"""Train the trained control of the retrieval probe and write it to the small file the test suite loads.

The recipe and the file format are `launcher.probes.trained_control` (a 2-layer llama trained on the marked-fact
task, `launcher.probes.synthetic.code_rows`, with the softmax restricted to the task's tokens). Training takes about
10 minutes of one CPU core, too long for the suite, so `tests/test_probe_trained_controls.py` loads the result and
runs the real retrieval probe on it; this script is how the file was made and how to make it again.

    python scripts/experiments/retrieval_control.py                        # writes tests/fixtures/retrieval_control
    python scripts/experiments/retrieval_control.py --steps 500 --out /tmp/control_short   # a shorter recipe
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from launcher.probes.trained_control import DATA_SEED, save_control, train

ROOT = Path(__file__).resolve().parents[2]

DEFAULT_OUT = ROOT / "tests" / "fixtures" / "retrieval_control"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args(argv)
    model, columns, log = train(args.steps, args.lr, args.batch, on_log=lambda r: print(json.dumps(r), flush=True))
    path = save_control(model, columns, args.out, {
        "recipe": {"task": "code_rows (marked fact)", "steps": args.steps, "lr": args.lr, "warmup": 50,
                   "schedule": "cosine to lr/10", "batch": args.batch, "data_seed": DATA_SEED,
                   "optimizer": "AdamW betas (0.9, 0.95), weight decay 0, clip 1.0",
                   "softmax": "restricted to task_token_ids", "torch": torch.__version__,
                   "cpu_capability": torch.backends.cpu.get_cpu_capability()},
        "log": log})
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
