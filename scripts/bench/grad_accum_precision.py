"""Gradient accumulation in bf16 (ZeRO-2) vs fp32 (ZeRO-2 and ZeRO-1): the loss difference at accumulation 8.

DeepSpeed 0.19's ZeRO-2 accumulates micro-batch gradients in the parameter dtype (bf16) by default;
`data_types.grad_accum_dtype: fp32` makes it accumulate into an fp32 partition buffer at stage 2
(ds_configs/zero2_bf16_fp32accum.json; verified with scripts/bench/zero2_accum_dtype.py) as at stage 1
(ds_configs/zero1_bf16_fp32accum.json). This trains the tiny demo model (one process, micro 1 x accumulation 8, the
demo data) with each ds_config, plus an all-fp32 reference, from the same init and the same samples, and reports the
train/val loss gaps (see docs/TRAINING.md for the measured figures).

    python scripts/unified_build/build_unified_dataset.py --sources data/sources/demo.json --out-root data/demo \
        --block-size 256
    python scripts/bench/grad_accum_precision.py                  # 300 steps; bf16 is emulated (slow) on AVX2 CPUs
    python scripts/bench/grad_accum_precision.py --steps 100 --out out/bench_accum
    python scripts/bench/grad_accum_precision.py --variants bf16_accum_zero2 fp32_accum_zero2 fp32_reference
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

from scripts.bench.harness import REPO, bench_config, launch, records

VARIANTS = {
    "bf16_accum_zero2": "ds_configs/zero2_bf16.json",
    "fp32_accum_zero2": "ds_configs/zero2_bf16_fp32accum.json",
    "fp32_accum_zero1": "ds_configs/zero1_bf16_fp32accum.json",
    "fp32_reference": "ds_configs/zero2_fp32.json",
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config_file", default="configs/tiny/demo_cpu.json", help="base training config (tiny model)")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps per variant")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="launcher/train.py's --device")
    p.add_argument("--accum", type=int, default=8, help="gradient accumulation steps (micro batch 1, one process)")
    p.add_argument("--out", default=None, help="keep the runs here (default: a temp dir, deleted)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                   help="ds_configs to train with (fp32_reference is always added: the gaps are measured to it)")
    args = p.parse_args(argv)
    variants = {name: VARIANTS[name] for name in VARIANTS if name in args.variants or name == "fp32_reference"}
    out_root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="accum_bench_"))
    results = {}
    try:
        for name, ds_config in variants.items():
            out = out_root / name
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            cfg = bench_config(REPO / args.config_file, out, args.steps, {
                "batch.micro_batch_size": 1, "batch.global_batch_size": args.accum,
                "eval.eval_interval": args.steps, "logging.log_interval": 1})
            # --precision explicit: under "auto" a CPU without native bf16 trains every variant in fp32
            # (launcher/engine.py resolve_precision), and the three would be the same run.
            precision = "fp32" if name == "fp32_reference" else "bf16"
            launch(cfg, name, 1, ["--deepspeed_config", ds_config, "--precision", precision], device=args.device)
            train = {r["step"]: r["loss"] for r in records(out, name, "train") if "loss" in r}
            evals = records(out, name, "eval")
            results[name] = {"train": train, "val": evals[-1]["losses"]["val"]}
            print(f"{name}: final val {results[name]['val']:.4f}", flush=True)
    finally:
        if not args.out:
            shutil.rmtree(out_root, ignore_errors=True)

    ref = results["fp32_reference"]
    tail = [s for s in ref["train"] if s > args.steps - 50]
    print(f"\n{args.steps} steps, accumulation {args.accum} (micro 1), tiny demo model, CPU")
    print("| variant | final val loss | val - fp32 ref | mean train loss, last 50 steps | mean abs train gap to ref |")
    print("| --- | --- | --- | --- | --- |")
    summary = {}
    for name, r in results.items():
        gaps = [abs(r["train"][s] - ref["train"][s]) for s in ref["train"] if s in r["train"]]
        mean_tail = sum(r["train"][s] for s in tail) / len(tail)
        summary[name] = {"val": r["val"], "val_gap": r["val"] - ref["val"], "train_tail": mean_tail,
                         "mean_abs_gap": sum(gaps) / len(gaps) if gaps else math.nan}
        print(f"| {name} | {r['val']:.4f} | {r['val'] - ref['val']:+.4f} | {mean_tail:.4f} | "
              f"{summary[name]['mean_abs_gap']:.4f} |")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
