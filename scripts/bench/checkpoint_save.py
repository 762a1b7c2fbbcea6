"""Checkpoint cost at a config's real shape: bytes and seconds of one resumable checkpoint (DeepSpeed engine save +
RNG files + fsync + COMPLETE marker, `launcher/checkpointing.py`) and of one GOLD save (model weights, rank 0).

One process, the config's model and optimizer, one optimizer step on a 16-token micro-batch first so that the Adam
state exists (its size is what a real save writes). On a CPU the engine trains in fp32 where bf16 is not native
(`--precision auto`), so the bytes are those of an fp32 engine; pass `--precision bf16` for the bf16 layout (the
GPU's: bf16 weights + fp32 master + Adam).

    python scripts/bench/checkpoint_save.py --config_file configs/base/750M_unified_v1.json --out /tmp/ckpt_bench
    python scripts/bench/checkpoint_save.py --config_file configs/tiny/demo_cpu.json       # seconds, to try it
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config_file", default="configs/base/750M_unified_v1.json", help="training config (its model)")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"], help="as launcher/train.py's")
    p.add_argument("--out", default=None, help="folder to save into (default: a temp dir, deleted after)")
    p.add_argument("--repeats", type=int, default=2, help="saves to time (the first also warms the page cache)")
    args = p.parse_args(argv)

    import torch
    from deepspeed.accelerator import get_accelerator

    from launcher import distributed as dist
    from launcher.checkpointing import CheckpointManager
    from launcher.config import TrainConfig
    from launcher.engine import build_ds_config, build_engine, precision_of, resolve_precision
    from launcher.gold import save_gold
    from model.transformer import Transformer

    values = TrainConfig.from_json(args.config_file).to_dict()
    values["batch"].update(micro_batch_size=1, global_batch_size=1)  # one micro-step per optimizer step
    cfg = TrainConfig.from_dict(values)
    os.environ.setdefault("WORLD_SIZE", "1")
    dist.init_distributed()
    device = get_accelerator().device_name()
    ds_config = build_ds_config(cfg, cfg.deepspeed_config, 1, on_cuda=device == "cuda")
    ds_config, note = resolve_precision(ds_config, cfg.deepspeed_config, args.precision, device)
    print(note)
    torch.manual_seed(0)
    model = Transformer(cfg.model)
    print(f"model: {model.num_params():,} parameters; engine {precision_of(ds_config)}, ZeRO stage "
          f"{ds_config['zero_optimization']['stage']}, device {device}")
    engine = build_engine(model, cfg, ds_config)
    x = torch.randint(0, 50257, (1, 17), device=get_accelerator().current_device_name())
    _, loss = engine(x[:, :-1], x[:, 1:])
    engine.backward(loss)
    engine.step()

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="ckpt_bench_"))
    try:
        manager = CheckpointManager(out / "run", keep_last=1)
        rows = []
        for i in range(args.repeats):
            t0 = time.perf_counter()
            path = manager.save(engine, i + 1, {"step": i + 1}, {"bench": True})
            seconds = time.perf_counter() - t0
            rows.append(("resumable checkpoint", _bytes(path), seconds))
            t0 = time.perf_counter()
            gold = save_gold(out / "run" / "gold", engine.module, cfg.model, {"step": i + 1})
            rows.append(("GOLD (weights, rank 0)", _bytes(gold), time.perf_counter() - t0))
        print(f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}; folder {out}")
        print("| save | bytes | seconds | GB/s |")
        print("| --- | --- | --- | --- |")
        for name, size, seconds in rows:
            print(f"| {name} | {size / 1e9:.2f} GB | {seconds:.1f} | {size / 1e9 / seconds:.2f} |")
    finally:
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)
    dist.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
