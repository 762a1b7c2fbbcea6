"""The position-invariance claim, measured with a model that does copy from its context: llama (RoPE) and gpt2 (learned
absolute positions) trained on the marked-fact task (`launcher.probes.synthetic.code_rows`, the recipe of
`scripts/experiments/retrieval_control.py`) with every training answer in the first half of the window (buckets
0-3 of the probe), then probed by the real retrieval probe in all 8 buckets. The claim: RoPE's worst/best bucket
ratio is near 1 and GPT-2's is not. Results in docs/PROBES.md and the README.

    python scripts/experiments/position_invariance.py --out out/position_invariance        # 2 archs x 3 seeds
    python scripts/experiments/position_invariance.py --steps 3000 --seeds 5 --workers 2 --out out/pi_long

Each run: 2-layer, 64-wide model, block 64, untied embeddings, restricted softmax, `--steps` AdamW steps of 32
fresh rows; probe: `build_probes(records=code_records(PROBE_SEED), filler_records=qa_records(PROBE_SEED))`, 8
answerable prompts per bucket (exact match in steps of 1/8) and 2 unanswerable. Writes `<out>/position_invariance.json`
and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from launcher.probes import NUM_BUCKETS, PROBE_SEED

ROOT = Path(__file__).resolve().parents[2]

FIRST_HALF = NUM_BUCKETS // 2  # training answers sit in buckets 0 .. FIRST_HALF - 1


def _probes():
    from data.tokenizer import get_tokenizer
    from launcher.probes import build_probes
    from launcher.probes.synthetic import code_records, qa_records

    return build_probes(get_tokenizer(), 64, seed=PROBE_SEED, per_bucket=8, unanswerable_per_bucket=2,
                        induction_vocab=256, records=list(code_records(400, PROBE_SEED)),
                        filler_records=list(qa_records(400, PROBE_SEED)))


def run_one(arch: str, seed: int, steps: int, lr: float) -> dict:
    from launcher.probes import run_probes
    from launcher.probes.trained_control import DATA_SEED, train

    probes = _probes()
    start = time.time()
    # The answer token must sit before the first second-half bucket's start position.
    model, _, log = train(steps, lr, 32, log_every=max(1, steps // 10), arch=arch, init_seed=seed,
                          data_seed=DATA_SEED + 1000 * seed, answer_before=probes.bucket_edges[FIRST_HALF],
                          on_log=lambda r: print(json.dumps(r), flush=True))
    metrics = run_probes(model, probes, 0, 1, "cpu")
    em = [metrics[f"probe/retrieval_em_b{b}"] for b in range(NUM_BUCKETS)]
    return {"arch": arch, "seed": seed, "steps": steps, "lr": lr, "em_by_bucket": em,
            "worst": min(em), "best": max(em), "ratio": (min(em) / max(em)) if max(em) > 0 else None,
            "first_half_mean": float(np.mean(em[:FIRST_HALF])), "second_half_mean": float(np.mean(em[FIRST_HALF:])),
            "not_in_context": metrics["probe/unanswerable_not_in_context"], "final_loss": log[-1]["loss"],
            "bucket_edges": list(probes.bucket_edges), "seconds": round(time.time() - start, 1)}


def _mean_sd(values: list[float]) -> str:
    return f"{np.mean(values):.2f} ± {np.std(values):.2f}"


def report(runs: list[dict]) -> str:
    lines = ["| arch | seed | EM b0..b7 | worst / best | worst/best | first half | second half | not in context | "
             "final loss |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(runs, key=lambda r: (r["arch"] != "llama", r["seed"])):
        ratio = "undefined" if r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append(f"| {r['arch']} | {r['seed']} | {' '.join(f'{e:.2f}' for e in r['em_by_bucket'])} | "
                     f"{r['worst']:.2f} / {r['best']:.2f} | {ratio} | {r['first_half_mean']:.2f} | "
                     f"{r['second_half_mean']:.2f} | {r['not_in_context']:.2f} | {r['final_loss']:.4f} |")
    lines.append("")
    for arch in ("llama", "gpt2"):
        rs = [r for r in runs if r["arch"] == arch]
        if rs:
            ratios = [r["ratio"] for r in rs if r["ratio"] is not None]
            lines.append(f"{arch}: worst/best {_mean_sd(ratios) if ratios else 'undefined'} over {len(ratios)} runs; "
                         f"first-half EM {_mean_sd([r['first_half_mean'] for r in rs])}, second-half EM "
                         f"{_mean_sd([r['second_half_mean'] for r in rs])}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--workers", type=int, default=2, help="runs side by side, one CPU thread each")
    p.add_argument("--archs", nargs="+", default=["llama", "gpt2"], choices=["llama", "gpt2"])
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(arch, seed) for seed in range(args.seeds) for arch in args.archs]
    start = time.time()
    with ProcessPoolExecutor(args.workers) as pool:
        futures = [pool.submit(run_one, arch, seed, args.steps, args.lr) for arch, seed in jobs]
        runs = []
        for f in futures:
            runs.append(f.result())
            print(json.dumps(runs[-1]), flush=True)
    result = {"runs": runs, "seconds": round(time.time() - start, 1)}
    tmp = args.out / "position_invariance.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(args.out / "position_invariance.json")
    print(report(runs))
    print(f"{len(runs)} runs in {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
