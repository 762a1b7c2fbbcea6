"""The project's two probe claims, measured: (a) position invariance, llama (RoPE) vs gpt2 (learned absolute positions)
trained on grounded QA whose answers sit only in the first half of the window, probed in all 8 buckets; (b) curriculum
timing, with vs without the circuit phase at the same token budget: the step at which the induction score first
crosses a threshold, and the retrieval exact match at the end. Several seeds each; numbers in docs/PROBES.md.

CPU scale (default; `launcher/probes/synthetic.py`: single-token names and numbers, ~150 GPT-2 ids, copy
sequences over ids [0, 256), the same `model.transformer.Transformer` and `launcher.probes` code, an in-process AdamW
loop that computes logits only at supervised positions):
    python scripts/experiments/probe_claims.py                                    # both, 3 seeds, 2 workers
    nohup python scripts/experiments/probe_claims.py --out out/probe_claims > out/probe_claims.log 2>&1 &
    python scripts/experiments/probe_claims.py --experiment position --seeds 5 --steps-position 800

GPU scale (the real trainer `launcher/train.py`, the real data and the real probe builder, `build_probes` on the
demo-generator QA; the position runs add first-half retrieval examples to the balanced mix as
`scripts/experiments/ablation_tiny.py` does):
    python scripts/experiments/probe_claims.py --scale gpu --config configs/base/750M_unified_v1.json \\
        --data-root data --steps 9000 --launcher "deepspeed --num_gpus 8" --out out/probe_claims_gpu
    # the same path as a tiny dry run on a CPU (the demo data, a few steps, one process):
    python scripts/experiments/probe_claims.py --scale gpu --config configs/tiny/demo_cpu.json \\
        --data-root data/demo --steps 12 --evals 2 --seeds 1 --launcher python --device cpu --out out/probe_claims_dry

Writes `<out>/probe_claims.json` (every run's metrics and induction curve) and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

from data.atomic import atomic_write_text
from launcher.probes import NUM_BUCKETS, PROBE_SEED

ROOT = Path(__file__).resolve().parents[2]

ARCHS = ("llama", "gpt2")
FIRST_HALF = (0, 1, 2, 3)
# The training mixes (data/sources/unified_phase1_circuit.json and unified_from_scratch.json): phase 1 code 40% +
# retrieval 30%, phase 2 code 23% + retrieval 20%; the rest is general text. Circuit phase: 9,125 of 75,000 steps.
CIRCUIT_MIX = {"copy": 0.40, "qa": 0.30, "general": 0.30}
BALANCED_MIX = {"copy": 0.23, "qa": 0.20, "general": 0.57}
CIRCUIT_SHARE = 9125 / 75000


def _mean_sd(values: list[float]) -> str:
    v = [x for x in values if not math.isnan(x)]
    if not v:
        return "n/a"
    return f"{np.mean(v):.2f} ± {np.std(v):.2f}" if len(v) > 1 else f"{v[0]:.2f}"


# ---------------------------------------------------------------------------------------------------- CPU scale


def _setup_worker():
    import torch

    torch.set_num_threads(1)  # one core per worker; --workers sets how many run side by side


def _model(arch: str, block_size: int, width: int, layers: int, heads: int, seed: int):
    import torch

    from model.config import ModelConfig
    from model.transformer import Transformer

    torch.manual_seed(seed)
    return Transformer(ModelConfig(n_embd=width, n_head=heads, n_layer=layers, block_size=block_size, dropout=0.0,
                                   fused_kernels=False, arch=arch))


def cpu_probe_set(block_size: int, per_bucket: int, unanswerable: int, induction: int):
    from data.tokenizer import get_tokenizer
    from launcher.probes import build_probes
    from launcher.probes.synthetic import COPY_VOCAB, qa_records

    return build_probes(get_tokenizer(), block_size, seed=PROBE_SEED, induction_count=induction,
                        per_bucket=per_bucket, unanswerable_per_bucket=unanswerable, induction_vocab=COPY_VOCAB,
                        records=list(qa_records(800, PROBE_SEED)))


def qa_stream(block_size: int, buckets, seed: int, chunk: int = 64):
    """Fresh training QA rows, never repeated: (row, supervised positions) laid out by the probe builder (fillers,
    answer in `buckets`) from new random facts (name x relation x number), a new chunk of articles whenever one runs
    out. A fixed set of a few hundred examples is memorised at this scale instead of teaching the model to look the
    answer up (docs/PROBES.md); here no example is seen twice. Contexts equal to a probe article's are dropped."""
    from data.tokenizer import get_tokenizer
    from launcher.probes import build_retrieval_items
    from launcher.probes.synthetic import qa_example_rows, qa_records

    tokenizer = get_tokenizer()
    probe_contexts = {r["context"] for r in qa_records(800, PROBE_SEED)}
    rng = np.random.Generator(np.random.PCG64(seed))
    for k in range(10**9):
        # Seeds 10_000 + ... never meet PROBE_SEED; each (seed, chunk) pair has its own articles.
        records = [r for r in qa_records(6 * chunk, 10_000 + 100_000 * seed + k) if r["context"] not in probe_contexts]
        per_bucket = max(1, chunk // len(buckets))
        items, _, _ = build_retrieval_items(tokenizer, block_size, records, buckets, per_bucket,
                                            max(1, per_bucket // 3), seed * 7919 + k)
        rows, sup = qa_example_rows(items)
        for i in rng.permutation(len(rows)):
            yield rows[int(i)], sup[int(i)]


def run_position(arch: str, seed: int, args_d: dict, probes) -> dict:
    """Train `arch` on first-half QA only, probe all 8 buckets."""
    import torch

    from launcher.probes import run_probes
    from launcher.probes import tiny_training as tt

    _setup_worker()
    a = argparse.Namespace(**args_d)
    model = _model(arch, a.block_size_position, a.width, a.layers, a.heads, seed)
    stream = qa_stream(a.block_size_position, FIRST_HALF, seed)

    def batch(step):
        rows, sup = zip(*(next(stream) for _ in range(a.batch)), strict=True)
        return tt.make_batch(rows, sup, a.block_size_position - 1)

    t0 = time.time()

    def on_step(step, loss):
        if (step + 1) % 100 == 0:
            print(f"  position {arch} seed {seed}: step {step + 1} loss {loss:.3f} ({time.time() - t0:.0f} s)",
                  flush=True)

    losses = tt.train_steps(model, batch, a.steps_position, lr=a.lr, on_step=on_step)
    metrics = run_probes(model, probes, 0, 1, torch.device("cpu"))
    return {"arch": arch, "seed": seed, "seconds": round(time.time() - t0, 1),
            "final_loss": float(np.mean(losses[-20:])), **metrics}


def run_curriculum(circuit: bool, seed: int, args_d: dict, probes) -> dict:
    """Train llama on copy / QA / unigram rows, the circuit mix first (or not), same steps and rows per step."""
    import torch

    from launcher.probes import finalize, probe_sums, run_probes
    from launcher.probes import synthetic as st
    from launcher.probes import tiny_training as tt

    _setup_worker()
    a = argparse.Namespace(**args_d)
    bs = a.block_size_curriculum
    model = _model("llama", bs, a.width, a.layers, a.heads, seed)
    stream = qa_stream(bs, range(NUM_BUCKETS), seed)
    rng = np.random.Generator(np.random.PCG64(seed))
    circuit_steps = round(CIRCUIT_SHARE * a.steps_curriculum) if circuit else 0
    induction_only = replace(probes, retrieval=[])

    def batch(step):
        mix = CIRCUIT_MIX if step < circuit_steps else BALANCED_MIX
        n_copy = round(mix["copy"] * a.batch)
        n_qa = round(mix["qa"] * a.batch)
        # Copy rows: the loss on every predictable position of the repeat (its 2nd..L-th token); an induction head
        # forms from that signal, and a handful of sampled positions per row was too little to form it here.
        rows, sup = st.copy_rows(rng, n_copy, bs)
        # QA rows: the answer span and its EOT, from fresh facts every step (never the same example twice).
        for row, s in (next(stream) for _ in range(n_qa)):
            rows.append(row)
            sup.append(s)
        g_rows, g_sup = st.unigram_rows(rng, a.batch - n_copy - n_qa, bs, a.positions)
        return tt.make_batch(rows + g_rows, sup + g_sup, bs - 1)

    curve: list[tuple[int, float]] = []

    def on_step(step, loss):
        if (step + 1) % a.probe_every == 0 or step == 0:
            m = finalize(induction_only, probe_sums(model, induction_only, 0, 1, torch.device("cpu")))
            curve.append((step + 1, m["probe/induction_score"]))
            print(f"  curriculum circuit={circuit} seed {seed}: step {step + 1} loss {loss:.3f} induction "
                  f"{curve[-1][1]:.3f} ({time.time() - t0:.0f} s)", flush=True)
            model.train()

    t0 = time.time()
    losses = tt.train_steps(model, batch, a.steps_curriculum, lr=a.lr, on_step=on_step)
    metrics = run_probes(model, probes, 0, 1, torch.device("cpu"))
    crossed = next((s for s, v in curve if v >= a.induction_threshold), None)
    return {"circuit_phase": circuit, "seed": seed, "circuit_steps": circuit_steps, "crossed_at": crossed,
            "curve": curve, "seconds": round(time.time() - t0, 1), "final_loss": float(np.mean(losses[-20:])),
            **metrics}


def position_table(runs: list[dict]) -> str:
    lines = ["| arch | seed | EM b0..b7 | worst bucket | best | worst/best | EM b0-3 / b4-7 |", "|" + " --- |" * 7]
    summary = {}
    for arch in ARCHS:
        mine = [r for r in runs if r["arch"] == arch]
        for r in mine:
            em = [r[f"probe/retrieval_em_b{b}"] for b in range(NUM_BUCKETS)]
            first, second = np.mean(em[:4]), np.mean(em[4:])
            lines.append(f"| {arch} | {r['seed']} | {' '.join(f'{e:.2f}' for e in em)} | "
                         f"{r['probe/retrieval_em_worst_bucket']:.2f} | {r['probe/retrieval_em_best_bucket']:.2f} | "
                         f"{r['probe/retrieval_position_invariance']:.2f} | {first:.2f} / {second:.2f} |")
        summary[arch] = {k: [r[f"probe/retrieval_em_{k}"] for r in mine] for k in ("worst_bucket", "best_bucket")}
        summary[arch]["ratio"] = [r["probe/retrieval_position_invariance"] for r in mine]
    lines.append("")
    lines.append("| arch | worst bucket EM | best bucket EM | worst/best (mean ± sd over seeds) |")
    lines.append("| --- | --- | --- | --- |")
    for arch, s in summary.items():
        lines.append(f"| {arch} | {_mean_sd(s['worst_bucket'])} | {_mean_sd(s['best_bucket'])} | "
                     f"{_mean_sd(s['ratio'])} |")
    return "\n".join(lines)


def curriculum_table(runs: list[dict], threshold: float) -> str:
    lines = [f"| circuit phase | seed | first step with induction >= {threshold} | highest induction (step) | "
             "induction at end | retrieval EM at end | worst / best bucket | not in context |", "|" + " --- |" * 8]
    for r in sorted(runs, key=lambda r: (not r["circuit_phase"], r["seed"])):
        step, top = max(r["curve"], key=lambda c: c[1]) if r.get("curve") else (None, math.nan)
        lines.append(f"| {'yes' if r['circuit_phase'] else 'no'} | {r['seed']} | {r['crossed_at'] or 'never'} | "
                     f"{top:.2f} ({step}) | {r['probe/induction_score']:.2f} | {r['probe/retrieval_em']:.2f} | "
                     f"{r['probe/retrieval_em_worst_bucket']:.2f} / {r['probe/retrieval_em_best_bucket']:.2f} | "
                     f"{r['probe/unanswerable_not_in_context']:.2f} |")
    return "\n".join(lines)


def main_cpu(args) -> dict:
    seeds = list(range(args.seeds))
    args_d = vars(args).copy()
    results: dict = {"scale": "cpu", "args": args_d}
    t0 = time.time()
    with ProcessPoolExecutor(max_workers=args.workers, initializer=_setup_worker) as pool:
        futures = []
        if args.experiment in ("position", "both"):
            probes_p = cpu_probe_set(args.block_size_position, args.probe_per_bucket, 2, 8)
            futures += [("position", pool.submit(run_position, arch, seed, args_d, probes_p))
                        for seed in seeds for arch in ARCHS]
        if args.experiment in ("curriculum", "both"):
            probes_c = cpu_probe_set(args.block_size_curriculum, args.probe_per_bucket, 2, 8)
            futures += [("curriculum", pool.submit(run_curriculum, circuit, seed, args_d, probes_c))
                        for seed in seeds for circuit in (True, False)]
        for kind, f in futures:
            r = f.result()
            results.setdefault(kind, []).append(r)
            print(f"{kind}: {json.dumps({k: v for k, v in r.items() if not k.startswith('probe/') and k != 'curve'})}"
                  f" em {r['probe/retrieval_em']:.2f} induction {r['probe/induction_score']:.2f}", flush=True)
    results["wall_seconds"] = round(time.time() - t0, 1)
    return results


# ---------------------------------------------------------------------------------------------------- GPU scale


def _remap(path: str, data_root: Path) -> str:
    """A config's data directory under --data-root by its last name (`data/unified_6B` and
    `data/demo/unified_6B` -> `<root>/unified_6B`): the real and the demo build use the same names."""
    return str((data_root / Path(path).name).resolve())


def gpu_config(args, out: Path, name: str, arch: str, seed: int, phases: list[dict] | None) -> Path:
    cfg = json.loads(Path(args.config).read_text())
    root = Path(args.data_root)
    cfg["model"]["arch"] = arch
    if arch == "gpt2":
        cfg["model"]["fused_kernels"] = False
    cfg["data"]["seed"] = seed
    config_steps = cfg["optim"]["max_iters"]
    if args.steps:
        cfg["optim"].update(max_iters=args.steps, warmup_iters=max(1, min(cfg["optim"]["warmup_iters"],
                                                                          args.steps // 10)))
        cfg["eval"]["eval_interval"] = max(1, args.steps // args.evals)
        cfg["gold"]["baseline_after_step"] = max(1, args.steps // 10)
    steps = cfg["optim"]["max_iters"]
    if phases is None:
        # The config's own phases; with --steps their boundaries shrink with the run (9,125 of 75,000 steps stays
        # 12.2% of it), or a short run would never leave the circuit phase.
        phases = [{**p, "dataset_dir": _remap(p["dataset_dir"], root),
                   "until_step": None if p["until_step"] is None
                   else max(1, round(p["until_step"] * steps / config_steps))} for p in cfg["curriculum"]["phases"]]
    cfg["curriculum"] = {"phases": phases}
    cfg["eval"]["sets"] = {k: _remap(v, root) for k, v in cfg["eval"]["sets"].items()}
    if cfg["eval"].get("val_dir"):
        cfg["eval"]["val_dir"] = _remap(cfg["eval"]["val_dir"], root)
    cfg["checkpoint"].update(dir=str((out / "checkpoints").resolve()), interval=steps)
    cfg["logging"].update(log_dir=str((out / "logs").resolve()), tensorboard_dir=str((out / "runs").resolve()))
    path = out / f"config_{name}.json"
    path.write_text(json.dumps(cfg, indent=2) + "\n")
    return path


def gpu_train(args, cfg: Path, name: str) -> None:
    cmd = [*shlex.split(args.launcher), str(ROOT / "launcher" / "train.py"), "--config_file", str(cfg),
           "--model_name", name, "--resume", "none"]
    if shlex.split(args.launcher)[0] == "python":
        cmd[0] = sys.executable
    print(f"training {name}: {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "RAGLLM_WORKSPACE": str(ROOT)})


def main_gpu(args) -> dict:
    from scripts.eval.rag_probe import probe_checkpoint
    from scripts.experiments.ablation_tiny import build_mix

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = json.loads(Path(args.config).read_text())
    root = Path(args.data_root)
    phases = base["curriculum"]["phases"]
    balanced = _remap(phases[-1]["dataset_dir"], root)
    missing = [d for d in [*(_remap(p["dataset_dir"], root) for p in phases),
                           *(_remap(v, root) for v in base["eval"]["sets"].values())] if not Path(d).is_dir()]
    if missing:
        raise SystemExit(f"probe_claims: --data-root {root} lacks {missing} (named by {args.config}); build the data "
                         "first: python scripts/unified_build/build_unified_dataset.py")
    results: dict = {"scale": "gpu", "args": vars(args).copy()}
    for seed in range(args.seeds):
        if args.experiment in ("position", "both"):
            mix_root = out / f"position_seed{seed}"
            # ablation_tiny's mix: the balanced data's samples interleaved 1:1 with first-half retrieval examples.
            build_mix(Path(balanced).parent, mix_root / "data", base["model"]["block_size"], args.train_per_bucket,
                      seed, balanced_name=Path(balanced).name)
            for arch in ARCHS:
                name = f"position_{arch}_seed{seed}"
                mix = [{"name": "mix", "dataset_dir": str((mix_root / "data" / "mix").resolve()), "until_step": None}]
                gpu_train(args, gpu_config(args, out, name, arch, seed, mix), name)
                metrics, _, what = probe_checkpoint(out / "checkpoints" / name / "gold", device=args.device,
                                                    per_bucket=args.probe_per_bucket, unanswerable=2, induction=32)
                results.setdefault("position", []).append({"arch": arch, "seed": seed, "what": what, **metrics})
        if args.experiment in ("curriculum", "both"):
            for circuit in (True, False):
                name = f"curriculum_{'circuit' if circuit else 'balanced'}_seed{seed}"
                only = None if circuit else [{"name": "balanced", "dataset_dir": balanced, "until_step": None}]
                gpu_train(args, gpu_config(args, out, name, "llama", seed, only), name)
                evals = [json.loads(line) for line in (out / "logs" / f"{name}_eval.jsonl").read_text().splitlines()]
                probes = [(r["step"], r["probe"]) for r in evals if isinstance(r.get("probe"), dict)]
                if not probes:
                    raise SystemExit(f"probe_claims: {name} logged no probes (block_size < 64?)")
                crossed = next((s for s, p in probes if (p.get("induction_score") or -1e9) >= args.induction_threshold),
                               None)
                last = {f"probe/{k}": (math.nan if v is None else v) for k, v in probes[-1][1].items()}
                curve = [(s, p["induction_score"]) for s, p in probes if p.get("induction_score") is not None]
                results.setdefault("curriculum", []).append({"circuit_phase": circuit, "seed": seed,
                                                             "crossed_at": crossed, "curve": curve, **last})
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", choices=["position", "curriculum", "both"], default="both",
                   help="which claim to measure")
    p.add_argument("--scale", choices=["cpu", "gpu"], default="cpu",
                   help="cpu: synthetic tasks, in-process tiny models; gpu: the real trainer, config and data")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per arm (model init, data order, layouts)")
    p.add_argument("--out", default="out/probe_claims", help="output folder (probe_claims.json; gpu: runs, logs)")
    p.add_argument("--induction-threshold", type=float, default=2.5,
                   help="induction score (nats) that counts as 'induction formed'; cpu default 2.5 is above the "
                        "ln(256) - ln(32) = 2.08 a model reaches by predicting 'some token of the first copy' "
                        "without order (docs/PROBES.md)")
    p.add_argument("--probe-per-bucket", type=int, default=8, help="held-out answerable probe prompts per bucket")
    p.add_argument("--train-per-bucket", type=int, default=60,
                   help="gpu position runs: training QA examples per trained bucket (cpu: fresh ones every step)")
    # cpu scale
    p.add_argument("--workers", type=int, default=2, help="cpu: runs side by side, one thread each")
    p.add_argument("--width", type=int, default=128, help="cpu: n_embd")
    p.add_argument("--layers", type=int, default=2, help="cpu: n_layer")
    p.add_argument("--heads", type=int, default=4, help="cpu: n_head")
    p.add_argument("--batch", type=int, default=16, help="cpu: rows per step")
    p.add_argument("--positions", type=int, default=4,
                   help="cpu curriculum: supervised positions per unigram row (copy rows: the whole repeat; QA rows: "
                        "the answer and its EOT)")
    p.add_argument("--lr", type=float, default=3e-3, help="cpu: peak AdamW learning rate (warmup 20, cosine)")
    p.add_argument("--block-size-position", type=int, default=64, help="cpu: context of the position runs")
    p.add_argument("--block-size-curriculum", type=int, default=64, help="cpu: context of the curriculum runs")
    p.add_argument("--steps-position", type=int, default=500, help="cpu: steps per position run")
    p.add_argument("--steps-curriculum", type=int, default=300, help="cpu: steps per curriculum run")
    p.add_argument("--probe-every", type=int, default=25, help="cpu curriculum: steps between induction probes")
    # gpu scale
    p.add_argument("--config", default="configs/base/750M_unified_v1.json", help="gpu: base training config")
    p.add_argument("--data-root", default="data", help="gpu: folder holding the config's data/<name> directories")
    p.add_argument("--steps", type=int, default=None, help="gpu: max_iters override (default: the config's)")
    p.add_argument("--evals", type=int, default=20, help="gpu with --steps: evals (with probes) per run")
    p.add_argument("--launcher", default="deepspeed --num_gpus 8", help="gpu: command that runs launcher/train.py")
    p.add_argument("--device", default="cuda", help="gpu: device for probing the GOLD checkpoints")
    p.add_argument("--report", default=None, metavar="JSON",
                   help="only print the tables of an earlier run's probe_claims.json")
    args = p.parse_args(argv)
    if args.report:
        done = json.loads(Path(args.report).read_text())
        if done.get("position"):
            print(position_table(done["position"]))
        if done.get("curriculum"):
            print(curriculum_table(done["curriculum"], done["args"]["induction_threshold"]))
        return 0
    if args.seeds < 1 or args.workers < 1:
        raise SystemExit("probe_claims: --seeds and --workers must be >= 1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = main_cpu(args) if args.scale == "cpu" else main_gpu(args)
    try:
        import torch

        results["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 - informational only
        pass
    if results.get("position"):
        print(position_table(results["position"]))
    if results.get("curriculum"):
        print(curriculum_table(results["curriculum"], args.induction_threshold))
    atomic_write_text(out / "probe_claims.json", json.dumps(results, indent=2, default=str) + "\n")
    print(f"wrote {out / 'probe_claims.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
