"""The architecture comparison in miniature: train "llama" (RoPE, SwiGLU, RMSNorm) and "gpt2" (learned absolute
positions, GELU, LayerNorm) on the same data, token budget, seed and schedule on CPU, then probe both. With
`--compare attention`, the same for llama with document-isolated vs causal attention (`model.attention`).

Usage (needs the demo data: `python scripts/unified_build/build_unified_dataset.py --sources data/sources/demo.json
--out-root data/demo`):
    python scripts/experiments/ablation_tiny.py                         # ~2 x 6 min on 2 cores
    python scripts/experiments/ablation_tiny.py --steps 600 --out out/ablation_long
    python scripts/experiments/ablation_tiny.py --skip-train            # re-probe the GOLD checkpoints of a run
    python scripts/experiments/ablation_tiny.py --compare attention --seeds 3 --out out/ablation_attention

What it does:
1. Builds one training token directory (`<out>/data/mix`, val split inside): the demo's balanced mix
   (`<demo-root>/unified_6B`) interleaved 1:1 with retrieval examples in the probe's layout (gold passage among
   filler passages, `data.formats` template) whose answers sit only in the FIRST HALF of the window (position
   buckets 0-3), generated from the training QA stream (data/sources/demo.json's seed), never the probe's.
2. Trains each variant with the real trainer (`launcher/train.py`, one process) from the tiny config
   (`configs/tiny/demo_cpu.json`'s model and optimizer, block_size 128) -- only `model.arch` (or `model.attention`)
   differs; `--seeds N` trains each N times with `data.seed` 1234, 1235, ... (init, dropout and sample order).
3. Probes each GOLD checkpoint (`launcher/probes/`, held-out items) in all 8 buckets, the last 4 at positions where
   no training answer sat, and prints one markdown table (the mean over seeds, and the range when N > 1);
   `<out>/ablation.json` holds every number.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from data.atomic import atomic_write_text
from data.demo_corpus import squad_v2_records
from data.packing import METHOD_FIXED
from data.token_dataset import TokenDataset, add_packing, write_token_dir
from data.tokenizer import EOT, get_tokenizer
from launcher.probes import NUM_BUCKETS, build_retrieval_items, training_qa_seed
from scripts.eval.rag_probe import probe_checkpoint

ROOT = Path(__file__).resolve().parents[2]

# --compare: variant name -> the model settings it trains with (everything else is the base config's).
VARIANTS = {"arch": {"llama": {"arch": "llama"}, "gpt2": {"arch": "gpt2"}},
            "attention": {"document": {"arch": "llama", "attention": "document"},
                          "causal": {"arch": "llama", "attention": "causal"}}}
TRAINED_BUCKETS = (0, 1, 2, 3)


def build_mix(demo_root: Path, out: Path, block_size: int, per_bucket: int, seed: int,
              balanced_name: str = "unified_6B") -> dict:
    """Training and val token dirs: balanced-mix samples (`<demo_root>/<balanced_name>`, the demo's or the real
    one) and first-half retrieval examples, one sample each."""
    enc = get_tokenizer()
    demo = TokenDataset(demo_root / balanced_name)
    demo_val = TokenDataset(demo_root / balanced_name / "val")
    # Training QA stream (the seed data/sources/demo.json trains on), articles the probe never uses.
    records = list(squad_v2_records(num_articles=3000, seed=training_qa_seed()))
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


def make_config(base: Path, out: Path, name: str, model: dict, block_size: int, steps: int, demo_root: Path,
                seed: int | None = None) -> Path:
    cfg = json.loads(base.read_text())
    cfg["model"].update(**model, block_size=block_size)
    if seed is not None:
        cfg["data"]["seed"] = seed
    cfg["optim"].update(max_iters=steps, warmup_iters=max(1, steps // 10))
    cfg["curriculum"] = {"phases": [{"name": "mix", "dataset_dir": str((out / "data" / "mix").resolve()),
                                     "until_step": None}]}
    cfg["eval"].update(eval_interval=max(1, steps // 6), val_dir=None,
                       sets={k: str((demo_root / Path(v).name).resolve()) for k, v in cfg["eval"]["sets"].items()})
    cfg["gold"]["baseline_after_step"] = max(1, steps // 10)
    cfg["checkpoint"].update(dir=str((out / "checkpoints").resolve()), interval=steps)
    cfg["logging"].update(log_dir=str((out / "logs").resolve()), tensorboard_dir=str((out / "runs").resolve()))
    path = out / f"config_{name}.json"
    path.write_text(json.dumps(cfg, indent=2) + "\n")
    return path


@torch.no_grad()
def same_target_val_losses(gold: Path, val_dir: Path, block_size: int, batch: int = 16) -> dict[str, float]:
    """Val loss of a GOLD checkpoint over the in-document targets (none after an EOT: what a "document" run trains
    and evaluates on), so both attentions are scored on the same tokens: read as packed rows with the model's own
    attention, and with every document of a row run alone (its own row, from position 0, as a prompt is served).
    For "document" the two agree by construction; for "causal" the gap is what it learned to read across documents."""
    from data.loader import read_micro_batch
    from model.attention import document_ids
    from model.io import load_model_checkpoint

    model, _, _ = load_model_checkpoint(gold)
    ds = TokenDataset(val_dir)
    n = ds.num_samples(block_size)
    packed = alone = 0.0
    count = 0
    for lo in range(0, n, batch):
        x, y = read_micro_batch(ds, np.arange(lo, min(n, lo + batch)), block_size, document_targets=True)
        logits, _ = model(x)
        real = y != -1
        ce = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), y.clamp(min=0), reduction="none")
        packed += float(ce[real].sum())
        count += int(real.sum())
        doc = document_ids(x, EOT)
        for r in range(x.shape[0]):
            for d in torch.unique(doc[r]).tolist():
                cols = torch.nonzero(doc[r] == d).flatten()
                a, b = int(cols[0]), int(cols[-1]) + 1
                if not bool(real[r, a:b].any()):
                    continue
                part, _ = model(x[r : r + 1, a:b])
                ce = torch.nn.functional.cross_entropy(part[0].float(), y[r, a:b].clamp(min=0), reduction="none")
                alone += float(ce[real[r, a:b]].sum())
    return {"val_same_targets_packed": packed / count, "val_same_targets_alone": alone / count}


def table(results: dict[str, dict]) -> str:
    """One column per variant: the mean over its seeds (`results[variant]` is a list of runs), and [min, max]."""
    archs = list(results)
    rows = [("val loss (GOLD checkpoint)", lambda r: f"{r['val_loss']:.3f}")]
    if "val_same_targets_packed" in next(iter(results.values()))[0]:
        rows += [("val loss, in-document targets, packed rows", lambda r: f"{r['val_same_targets_packed']:.3f}"),
                 ("val loss, same targets, each document alone", lambda r: f"{r['val_same_targets_alone']:.3f}")]
    rows.append(("induction score", lambda r: f"{r['probe/induction_score']:.3f}"))
    for b in range(NUM_BUCKETS):
        where = "trained" if b in TRAINED_BUCKETS else "unseen"
        rows.append((f"retrieval EM bucket {b} ({where})", lambda r, b=b: f"{r[f'probe/retrieval_em_b{b}']:.2f}"))
    rows += [("retrieval EM, buckets 0-3 / 4-7", lambda r: f"{r['em_first_half']:.2f} / {r['em_second_half']:.2f}"),
             ("answer LL gain from the passage", lambda r: f"{r['probe/retrieval_ll_gain']:.3f}"),
             ("unanswerable -> 'not in the context'", lambda r: f"{r['probe/unanswerable_not_in_context']:.2f}")]
    lines = ["| | " + " | ".join(archs) + " |", "| --- |" + " --- |" * len(archs)]
    def cell(runs: list[dict], fmt) -> str:
        if len(runs) == 1:
            return fmt(runs[0])
        keys = [k for k in runs[0] if isinstance(runs[0][k], int | float)]
        mean = {k: float(np.mean([r[k] for r in runs])) for k in keys}
        lo = {k: min(r[k] for r in runs) for k in keys}
        hi = {k: max(r[k] for r in runs) for k in keys}
        return f"{fmt(mean)} [{fmt(lo)}, {fmt(hi)}]"

    lines += [f"| {name} | " + " | ".join(cell(results[a], fmt) for a in archs) + " |" for name, fmt in rows]
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
    parser.add_argument("--compare", default="arch", choices=sorted(VARIANTS),
                        help="arch: llama vs gpt2; attention: llama with document vs causal attention")
    parser.add_argument("--seeds", type=int, default=1, help="training runs per variant (data.seed 1234, 1235, ...)")
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
    # (run name, model settings, data.seed): one seed keeps the names and seed of the original two-run ablation.
    runs = [(variant if args.seeds == 1 else f"{variant}_s{k}", model, None if args.seeds == 1 else 1234 + k)
            for variant, model in VARIANTS[args.compare].items() for k in range(args.seeds)]
    if not args.skip_train:
        info = build_mix(demo_root, out / "data", args.block_size, args.train_per_bucket, args.seed)
        print(f"training mix: {json.dumps(info)}", flush=True)
        base_sets = json.loads(Path(args.config).read_text())["eval"]["sets"].values()
        for name in [Path(v).name for v in base_sets]:  # the demo's eval sets, read at this block size
            add_packing(demo_root / name, args.block_size)
        for name, model, seed in runs:
            cfg = make_config(Path(args.config), out, name, model, args.block_size, args.steps, demo_root, seed)
            cmd = [sys.executable, str(ROOT / "launcher" / "train.py"), "--config_file", str(cfg),
                   "--model_name", f"ablation_{name}", "--resume", "none", "--device", args.device]
            print(f"training {name}: {' '.join(cmd)}", flush=True)
            subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "RAGLLM_WORKSPACE": str(ROOT)})
    results: dict[str, list[dict]] = {}
    for name, _, _ in runs:
        gold = out / "checkpoints" / f"ablation_{name}" / "gold"
        if not gold.is_dir():
            raise SystemExit(f"ablation_tiny: no GOLD checkpoint at {gold}; did training of {name} finish?")
        metrics, _, what = probe_checkpoint(gold, per_bucket=args.probe_per_bucket, unanswerable=2, induction=32)
        meta = json.loads((gold / "metadata.json").read_text())
        first = [metrics[f"probe/retrieval_em_b{b}"] for b in TRAINED_BUCKETS]
        second = [metrics[f"probe/retrieval_em_b{b}"] for b in range(NUM_BUCKETS) if b not in TRAINED_BUCKETS]
        variant = name.split("_s")[0]
        same = same_target_val_losses(gold, out / "data" / "mix" / "val", args.block_size) \
            if args.compare == "attention" else {}
        results.setdefault(variant, []).append(
            {**metrics, "val_loss": meta["losses"]["val"], "gold_step": meta["step"], **same,
             "em_first_half": sum(first) / len(first), "em_second_half": sum(second) / len(second)})
        print(f"{name}: GOLD step {meta['step']}; {what}", flush=True)
    print(table(results))
    atomic_write_text(out / "ablation.json",
                      json.dumps({"args": vars(args), "results": results}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
