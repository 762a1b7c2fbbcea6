"""What document-isolated attention costs against the plain causal mask, side by side in one process, on this machine.

Usage:
    python scripts/bench/attention.py                  # CPU or GPU, whatever this machine has; Markdown tables
    python scripts/bench/attention.py --reps 9 --batch-750m 4
    python scripts/bench/attention.py --model-step configs/base/750M_unified_v1.json --batch 12   # GPU: the 750M step

Rows are packed like the training data: documents of log-normal length (median --doc-median tokens, at most a
quarter of the row), each ending with EOT, filling the row. Each row of the tables is the median of --reps timed
runs after one warm-up, the variants interleaved run by run so that a noisy neighbour slows all of them alike; read
the ratios.

Tables:
  attention     one attention call of the demo shape (configs/tiny/demo_cpu.json: micro-batch 1, 2 heads of 32,
                256 tokens) and of the 750M layer (20 heads of 64, 1024 tokens; --batch-750m rows, the config's
                micro-batch is 12), forward and backward, through `model.attention` (`build_attention_mask` once,
                then `attend`): "causal" (SDPA is_causal, the flash path), "document" with the backend "auto" picks
                here (SDPA with an additive mask on the CPU), and on CUDA also the other document backend.
                Forward only, it adds eager FlexAttention (the CPU's only FlexAttention: it has no backward there).
  model step    forward + backward of the whole demo model (configs/tiny/demo_cpu.json), causal vs document.

With --model-step CONFIG only one table: forward + backward of that config's whole model (bf16 on CUDA, fp32 on the
CPU; --batch rows of its block size) for causal and document attention at dropout 0 and at dropout 0.1 (the
base config's), so a GPU says what document isolation and dropout each cost per step (scripts/bench/gpu_report.py
runs it at the 750M config). Each variant is its own model (same init); on CUDA "document" at dropout 0 is FlexAttention
(compiled on first use, outside the timing) and at 0.1 SDPA's memory-efficient kernel with a mask.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch

from model import attention as attn
from model.config import EOT_ID, ModelConfig
from model.transformer import Transformer


def packed_rows(batch: int, length: int, median: int, seed: int = 0) -> torch.Tensor:
    """(batch, length) token ids: random non-EOT ids in documents of log-normal length, each ended by EOT."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, EOT_ID, (batch, length), generator=gen)
    for b in range(batch):
        t = 0
        while t < length:
            n = max(2, int(torch.empty(1).log_normal_(mean=float(torch.tensor(median).log()), std=0.8,
                                                      generator=gen)))
            t += n
            if t - 1 < length:
                rows[b, t - 1] = EOT_ID
    return rows


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: dict[str, Callable[[], None]], reps: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each function, run in turn `reps` times after one warm-up each."""
    for fn in fns.values():
        fn()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def attention_variants(idx: torch.Tensor, heads: int, head_dim: int, dtype: torch.dtype, backward: bool
                       ) -> dict[str, Callable[[], None]]:
    device = idx.device
    gen = torch.Generator(device=device).manual_seed(1)
    shape = (idx.shape[0], heads, idx.shape[1], head_dim)
    q, k, v = (torch.randn(shape, generator=gen, device=device, dtype=dtype).requires_grad_(backward)
               for _ in range(3))
    backends = {"causal": ("causal", "auto"), "document (auto)": ("document", "auto")}
    if device.type == "cuda":
        backends |= {"document (sdpa)": ("document", "sdpa"), "document (flex)": ("document", "flex")}

    def call(kind: str, backend: str) -> Callable[[], None]:
        def run() -> None:
            mask = attn.build_attention_mask(idx, kind, backend, 0.0, dtype, EOT_ID)
            out = attn.attend(q, k, v, mask, dropout_p=0.0)
            if backward:
                out.sum().backward()

        return run

    fns = {name: call(*spec) for name, spec in backends.items()}
    if not backward and device.type == "cpu":
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        def flex_eager() -> None:
            doc = attn.document_ids(idx, EOT_ID)
            t = idx.shape[1]
            block_mask = create_block_mask(attn.flex_mask_mod(doc), idx.shape[0], None, t, t, device="cpu")
            flex_attention(q, k, v, block_mask=block_mask)

        fns["document (eager flex)"] = flex_eager
    return fns


def model_step_variants(device: torch.device, idx: torch.Tensor) -> dict[str, Callable[[], None]]:
    base = ModelConfig.from_json("configs/tiny/demo_cpu.json").to_dict()
    fns = {}
    for kind in ("causal", "document"):
        torch.manual_seed(0)
        model = Transformer(ModelConfig(**{**base, "attention": kind, "dropout": 0.0})).to(device).train()

        def step(model=model) -> None:
            _, loss = model(idx, idx.roll(-1, 1))
            loss.backward()

        fns[kind] = step
    return fns


def config_step_variants(path: str, batch: int, device: torch.device, doc_median: int
                         ) -> tuple[dict[str, Callable[[], None]], str]:
    """Forward + backward of the whole model of `path` per (attention, dropout) variant; and what ran."""
    base = ModelConfig.from_json(path).to_dict()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    idx = packed_rows(batch, base["block_size"], doc_median).to(device)
    fns = {}
    for kind in ("causal", "document"):
        for dropout in (0.0, 0.1):
            torch.manual_seed(0)
            config = ModelConfig(**{**base, "attention": kind, "dropout": dropout, "compile": False})
            with torch.device(device):
                model = Transformer(config).to(dtype).train()
            backend = attn.resolve_backend(kind, config.attention_backend, device, dropout)

            def step(model=model) -> None:
                _, loss = model(idx, idx.roll(-1, 1))
                loss.backward()
                model.zero_grad(set_to_none=True)

            fns[f"{kind}, dropout {dropout:g} ({backend})"] = step
    return fns, f"{path}: {batch} x {base['block_size']} tokens, {str(dtype).removeprefix('torch.')}"


def table(title: str, times: dict[str, float]) -> str:
    ref = next(iter(times.values()))  # the first variant is causal attention (at dropout 0)
    lines = [f"| {title} | ms | / first row |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {t * 1e3:.2f} | {t / ref:.2f} |" for name, t in times.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=7, help="timed runs per variant (median reported)")
    p.add_argument("--batch-750m", type=int, default=2, help="rows of the 750M-shaped attention call")
    p.add_argument("--doc-median", type=int, default=250, help="median document length in tokens")
    p.add_argument("--model-step", metavar="CONFIG", help="only time the whole model of this training config")
    p.add_argument("--batch", type=int, default=12, help="rows of --model-step (the 750M micro-batch is 12)")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.model_step:
        fns, what = config_step_variants(args.model_step, args.batch, device, args.doc_median)
        print(table(f"model step ({what}), forward + backward", interleaved(fns, args.reps, device)))
        return 0
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    where = (torch.cuda.get_device_name() if device.type == "cuda"
             else f"CPU, torch capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads")
    print(f"attention benchmark: {where}; torch {torch.__version__}; {str(dtype).removeprefix('torch.')}; "
          f"median of {args.reps}\n")
    for label, batch, heads, head_dim, length in (("demo (1 x 2 x 256 x 32)", 1, 2, 32, 256),
                                                  (f"750M layer ({args.batch_750m} x 20 x 1024 x 64)",
                                                   args.batch_750m, 20, 64, 1024)):
        idx = packed_rows(batch, length, min(args.doc_median, length // 4)).to(device)
        docs = int((idx == EOT_ID).sum()) / batch
        for backward in (True, False):
            times = interleaved(attention_variants(idx, heads, head_dim, dtype, backward), args.reps, device)
            print(table(f"{label}, {'forward + backward' if backward else 'forward'}, {docs:.1f} documents/row",
                        times) + "\n")
    idx = packed_rows(1, 256, min(args.doc_median, 64)).to(device)
    print(table("demo model step (forward + backward, 1 x 256)",
                interleaved(model_step_variants(device, idx), args.reps, device)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
