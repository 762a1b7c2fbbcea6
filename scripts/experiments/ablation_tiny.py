"""The spec's architecture comparison in miniature: train "llama" (RoPE, SwiGLU, RMSNorm) and "gpt2" (learned absolute
positions, GELU, LayerNorm) on the same data, token budget, seed and schedule on CPU, then probe both.

Usage (needs the demo data: `python scripts/unified_build/build_unified_dataset.py --sources data/sources/demo.json
--out-root data/demo`):
    python scripts/experiments/ablation_tiny.py                         # ~2 x 6 min on 2 cores
    python scripts/experiments/ablation_tiny.py --steps 600 --out out/ablation_long
    python scripts/experiments/ablation_tiny.py --skip-train            # re-probe the GOLD checkpoints of a run

What it does:
1. Builds one training token directory (`<out>/data/mix`, val split inside): the demo's balanced mix
   (`<demo-root>/unified_6B`) interleaved 1:1 with retrieval examples in the probe's layout (gold passage among
   filler passages, `data.formats` template) whose answers sit only in the FIRST HALF of the window (position
   buckets 0-3), generated from the training QA stream (seed 1234), never the probe's.
2. Trains each architecture with the real trainer (`launcher/train.py`, one process) from the tiny config
   (`configs/tiny/demo_cpu.json`'s model and optimizer, block_size 128) -- only `model.arch` differs.
3. Probes each GOLD checkpoint (`launcher/probes.py`, held-out items) in all 8 buckets, the last 4 at positions where
   no training answer sat, and prints one markdown table; `<out>/ablation.json` holds every number.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from data.demo_corpus import squad_v2_records  # noqa: E402
from data.packing import METHOD_FIXED  # noqa: E402
from data.token_dataset import TokenDataset, add_packing, write_token_dir  # noqa: E402
from data.tokenizer import EOT, get_tokenizer  # noqa: E402
from launcher.probes import NUM_BUCKETS, TRAINING_QA_SEED, build_retrieval_items  # noqa: E402
from scripts.eval.rag_probe import probe_checkpoint  # noqa: E402

ARCHS = ("llama", "gpt2")
TRAINED_BUCKETS = (0, 1, 2, 3)


def build_mix(demo_root: Path, out: Path, block_size: int, per_bucket: int, seed: int,
              balanced_name: str = "unified_6B") -> dict:
    """Training and val token dirs: balanced-mix samples (`<demo_root>/<balanced_name>`, the demo's or the real
    one) and first-half retrieval examples, one sample each."""
    enc = get_tokenizer()
    demo = TokenDataset(demo_root / balanced_name)
    demo_val = TokenDataset(demo_root / balanced_name / "val")
    # Training QA stream (seed 1234, what data/sources/demo.json trains on), articles the probe never uses.
    records = list(squad_v2_records(num_articles=3000, seed=TRAINING_QA_SEED))
    info = {}
    for split, recs, dataset, n in (("train", records[:9000], demo, per_bucket),
                                    ("val", records[9000:], demo_val, max(4, per_bucket // 10))):
        items, edges, _ = build_retrieval_items(enc, block_size, recs, TRAINED_BUCKETS, n, max(1, n // 5),
                                                seed + (split == "val"))
        rng = np.random.Generator(np.random.PCG64(seed))
        samples, cursor = [], 0
        for item in items:
            # A demo-mix sample, then a retrieval sample: the example, EOT, and demo tokens up to block_size.
            for _ in range(2):
                if cursor + block_size > dataset.num_tokens:
                    cursor = 0
                chunk = dataset.tokens(cursor, cursor + block_size)
                cursor += block_size
                if len(samples) % 2 == 0:
                    samples.append(chunk)
                    continue
                example = [*item.prompt, *item.answer_tokens, EOT]
                samples.append(np.asarray(example + chunk[: block_size - len(example)].tolist(), dtype=np.int64))
        order = rng.permutation(len(samples))
        # One extra token: a sample is block_size + 1 tokens read at multiples of block_size.
        tokens = [samples[int(i)] for i in order] + [np.array([EOT])]
        target = out / "mix" if split == "train" else out / "mix" / "val"
        # Fixed windows, not packing: the samples above place each answer in a chosen bucket of the window.
        write_token_dir(target, tokens, lineage={"built_by": "scripts/experiments/ablation_tiny.py",
                                                 "answers_in_buckets": list(TRAINED_BUCKETS), "bucket_edges": edges},
                        pack_block_sizes=[block_size], pack_method=METHOD_FIXED)
        info[split] = {"retrieval_examples": len(items), "samples": len(samples), "bucket_edges": edges}
    return info


def make_config(base: Path, out: Path, arch: str, block_size: int, steps: int, demo_root: Path) -> Path:
    cfg = json.loads(base.read_text())
    cfg["model"].update(arch=arch, block_size=block_size)
    cfg["optim"].update(max_iters=steps, warmup_iters=max(1, steps // 10))
    cfg["curriculum"] = {"phases": [{"name": "mix", "dataset_dir": str((out / "data" / "mix").resolve()),
                                     "until_step": None}]}
    cfg["eval"].update(eval_interval=max(1, steps // 6), val_dir=None,
                       sets={k: str((demo_root / Path(v).name).resolve()) for k, v in cfg["eval"]["sets"].items()})
    cfg["gold"]["baseline_after_step"] = max(1, steps // 10)
    cfg["checkpoint"].update(dir=str((out / "checkpoints").resolve()), interval=steps)
    cfg["logging"].update(log_dir=str((out / "logs").resolve()), tensorboard_dir=str((out / "runs").resolve()))
    path = out / f"config_{arch}.json"
    path.write_text(json.dumps(cfg, indent=2) + "\n")
    return path


def table(results: dict[str, dict]) -> str:
    archs = list(results)
    rows = [("val loss (GOLD checkpoint)", lambda r: f"{r['val_loss']:.3f}"),
            ("induction score", lambda r: f"{r['probe/induction_score']:.3f}")]
    for b in range(NUM_BUCKETS):
        where = "trained" if b in TRAINED_BUCKETS else "unseen"
        rows.append((f"retrieval EM bucket {b} ({where})", lambda r, b=b: f"{r[f'probe/retrieval_em_b{b}']:.2f}"))
    rows += [("retrieval EM, buckets 0-3 / 4-7", lambda r: f"{r['em_first_half']:.2f} / {r['em_second_half']:.2f}"),
             ("answer LL gain from the passage", lambda r: f"{r['probe/retrieval_ll_gain']:.3f}"),
             ("unanswerable -> 'not in the context'", lambda r: f"{r['probe/unanswerable_not_in_context']:.2f}")]
    lines = ["| | " + " | ".join(archs) + " |", "| --- |" + " --- |" * len(archs)]
    lines += [f"| {name} | " + " | ".join(fmt(results[a]) for a in archs) + " |" for name, fmt in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-root", default="data/demo", help="built demo data (unified_6B and *_eval_tokenized)")
    parser.add_argument("--out", default="out/ablation_tiny", help="output folder (data, checkpoints, logs, table)")
    parser.add_argument("--config", default="configs/tiny/demo_cpu.json", help="base training config (model, optim)")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per architecture")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="launcher/train.py's --device")
    parser.add_argument("--block-size", type=int, default=128, help="context length of both models")
    parser.add_argument("--train-per-bucket", type=int, default=150, help="training retrieval examples per bucket 0-3")
    parser.add_argument("--probe-per-bucket", type=int, default=16, help="held-out probe prompts per bucket")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the example layout and sample order")
    parser.add_argument("--skip-train", action="store_true", help="only probe existing GOLD checkpoints under --out")
    args = parser.parse_args(argv)
    demo_root, out = Path(args.demo_root), Path(args.out)
    missing = [d for d in ("unified_6B", "unified_6B/val", "general_eval_tokenized") if not (demo_root / d).is_dir()]
    if missing:
        raise SystemExit(f"ablation_tiny: {demo_root} lacks {missing}; build the demo data first: python "
                         f"scripts/unified_build/build_unified_dataset.py --sources data/sources/demo.json "
                         f"--out-root {demo_root}")
    if args.steps < 12:
        raise SystemExit("ablation_tiny: --steps must be >= 12 (6 evals and a warmup)")
    out.mkdir(parents=True, exist_ok=True)
    if not args.skip_train:
        info = build_mix(demo_root, out / "data", args.block_size, args.train_per_bucket, args.seed)
        print(f"training mix: {json.dumps(info)}", flush=True)
        base_sets = json.loads(Path(args.config).read_text())["eval"]["sets"].values()
        for name in [Path(v).name for v in base_sets]:  # the demo's eval sets, read at this block size
            add_packing(demo_root / name, args.block_size)
        for arch in ARCHS:
            cfg = make_config(Path(args.config), out, arch, args.block_size, args.steps, demo_root)
            cmd = [sys.executable, str(ROOT / "launcher" / "train.py"), "--config_file", str(cfg),
                   "--model_name", f"ablation_{arch}", "--resume", "none", "--device", args.device]
            print(f"training {arch}: {' '.join(cmd)}", flush=True)
            subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "RAGLLM_WORKSPACE": str(ROOT)})
    results = {}
    for arch in ARCHS:
        gold = out / "checkpoints" / f"ablation_{arch}" / "gold"
        if not gold.is_dir():
            raise SystemExit(f"ablation_tiny: no GOLD checkpoint at {gold}; did training of {arch} finish?")
        metrics, _, what = probe_checkpoint(gold, per_bucket=args.probe_per_bucket, unanswerable=2, induction=32)
        meta = json.loads((gold / "metadata.json").read_text())
        first = [metrics[f"probe/retrieval_em_b{b}"] for b in TRAINED_BUCKETS]
        second = [metrics[f"probe/retrieval_em_b{b}"] for b in range(NUM_BUCKETS) if b not in TRAINED_BUCKETS]
        results[arch] = {**metrics, "val_loss": meta["losses"]["val"], "gold_step": meta["step"],
                         "em_first_half": sum(first) / len(first), "em_second_half": sum(second) / len(second)}
        print(f"{arch}: GOLD step {meta['step']}; {what}", flush=True)
    print(table(results))
    tmp = out / f".ablation.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps({"args": vars(args), "results": results}, indent=2, default=str) + "\n")
    tmp.replace(out / "ablation.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
