"""Architecture smoke test: build the model of a training config and verify what the base config promises.

Usage:
    python scripts/model/smoke_test_arch.py --config configs/tiny/demo_cpu.json
    python scripts/model/smoke_test_arch.py --config configs/base/750M_unified_v1.json          # meta-device count
    python scripts/model/smoke_test_arch.py --config configs/base/750M_unified_v1.json --full   # everything (~8 GB RAM)

Checks, printed as a table; the exit code is 1 if any fails:
  params        parameter count (on the meta device: no memory) equals the closed form of docs/DESIGN.md "Scale notes"
  tied          embedding and lm_head are one tensor (when tie_weights)
  shapes        logits are (batch, seq, vocab_size)
  causal        changing token t changes no logit before t (and does change logits at t)
  document      in a row [A, EOT, B], replacing A changes none of B's logits; skipped for model.attention "causal"
  rope          a query/key score depends only on their distance (and does depend on it); skipped for arch gpt2
  init_loss     loss at init within 0.1 of ln(vocab_size)
  fwd_bwd_fp32  one forward/backward in fp32 with finite gradients on every parameter
  fwd_bwd_bf16  the same in bf16
Models above 200M parameters get only the meta-device checks unless --full is given.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable

import torch

from model.config import EOT_ID, ModelConfig
from model.transformer import Transformer, apply_rotary

FULL_CHECK_LIMIT = 200_000_000


def check_params(config: ModelConfig) -> tuple[bool, str]:
    with torch.device("meta"):
        model = Transformer(config)
    counted, expected = model.num_params(), config.expected_num_params()
    return counted == expected, f"{counted:,} (closed form {expected:,})"


def check_tied(config: ModelConfig) -> tuple[bool, str]:
    with torch.device("meta"):
        model = Transformer(config)
    shared = model.output.weight is model.tok_embeddings.weight
    if config.tie_weights:
        return shared, "lm_head is the embedding tensor" if shared else "lm_head is a separate tensor"
    return not shared, "untied (tie_weights false)"


def check_shapes(model: Transformer, tokens: torch.Tensor) -> tuple[bool, str]:
    logits, _ = model(tokens)
    expected = (*tokens.shape, model.config.vocab_size)
    return tuple(logits.shape) == expected, f"logits {tuple(logits.shape)}"


@torch.no_grad()
def check_causal(model: Transformer, tokens: torch.Tensor) -> tuple[bool, str]:
    t = tokens.shape[1] // 2
    changed = tokens.clone()
    changed[:, t] = (changed[:, t] + 1) % model.config.vocab_size
    before, _ = model(tokens)
    after, _ = model(changed)
    leak = (before[:, :t] - after[:, :t]).abs().max().item()
    effect = (before[:, t:] - after[:, t:]).abs().max().item()
    return leak == 0.0 and effect > 0.0, f"max change before t={t}: {leak:.1e}; at/after t: {effect:.1e}"


@torch.no_grad()
def check_document(model: Transformer, tokens: torch.Tensor) -> tuple[bool, str]:
    """Document B, after A's EOT, must read nothing of A: its logits stay the same when A is replaced."""
    tokens = tokens.masked_fill(tokens == EOT_ID, 0)  # exactly one EOT: the end of A
    t = tokens.shape[1] // 2
    tokens[:, t] = EOT_ID
    other = tokens.clone()
    other[:, :t] = (other[:, :t] + 1) % EOT_ID
    before, _ = model(tokens)
    after, _ = model(other)
    leak = (before[:, t + 1 :] - after[:, t + 1 :]).abs().max().item()
    return leak < 1e-5, f"max change of B's logits when A (positions < {t}) is replaced: {leak:.1e}"


@torch.no_grad()
def check_rope(model: Transformer) -> tuple[bool, str]:
    """score(q at m, k at n) must equal score(q at m+s, k at n+s), and differ for another distance."""
    head_dim = model.config.head_dim
    length = min(model.config.block_size, 256)
    cos, sin = model.rotary(length, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 1, head_dim, generator=gen, dtype=torch.float64)
    k = torch.randn(1, 1, 1, head_dim, generator=gen, dtype=torch.float64)

    def score(m: int, n: int) -> float:
        qm = apply_rotary(q, cos[m : m + 1].double(), sin[m : m + 1].double())
        kn = apply_rotary(k, cos[n : n + 1].double(), sin[n : n + 1].double())
        return (qm * kn).sum().item()

    distance = 7
    same_distance = [score(m, m - distance) for m in range(distance, length, max(1, length // 16))]
    # cos/sin tables are fp32, so angles carry a relative error of ~1e-7 x position: compare relative to the score.
    scale = max(abs(s) for s in same_distance)
    spread = (max(same_distance) - min(same_distance)) / scale
    other = abs(score(100 % length, 100 % length - 3) - same_distance[0]) / scale
    ok = spread < 1e-5 and other > 1e-2
    return ok, f"relative score spread at fixed distance {spread:.1e}; relative change with distance {other:.1e}"


@torch.no_grad()
def check_init_loss(model: Transformer, tokens: torch.Tensor) -> tuple[bool, str]:
    _, loss = model(tokens[:, :-1], tokens[:, 1:])
    expected = math.log(model.config.vocab_size)
    return abs(loss.item() - expected) < 0.1, f"{loss.item():.4f} vs ln({model.config.vocab_size}) = {expected:.4f}"


def check_fwd_bwd(model: Transformer, tokens: torch.Tensor, dtype: torch.dtype) -> tuple[bool, str]:
    model = model.to(dtype)
    model.zero_grad(set_to_none=True)
    _, loss = model(tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    bad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    model.to(torch.float32)
    model.zero_grad(set_to_none=True)
    ok = torch.isfinite(loss).item() and not bad
    return ok, f"loss {loss.item():.4f}; parameters without finite grad: {bad[:3] or 'none'}"


def run_checks(config: ModelConfig, full: bool, batch: int = 2, seq: int | None = None) -> list[tuple[str, bool, str]]:
    results: list[tuple[str, bool, str]] = []

    def record(name: str, fn: Callable[[], tuple[bool, str]]):
        try:
            ok, detail = fn()
        except Exception as e:  # a crash is a failed check, reported with the others
            ok, detail = False, f"{type(e).__name__}: {e}"
        results.append((name, ok, detail))

    record("params", lambda: check_params(config))
    record("tied", lambda: check_tied(config))
    if not full and config.expected_num_params() > FULL_CHECK_LIMIT:
        results.append(("(others)", True, "skipped: meta-device checks only for models > 200M (use --full)"))
        return results

    torch.manual_seed(0)
    # Dropout would make the causality and init-loss checks random; the architecture is checked without it.
    model = Transformer(ModelConfig(**{**config.to_dict(), "dropout": 0.0})).eval()
    seq = seq or min(config.block_size, 64)
    tokens = torch.randint(0, 50257, (batch, seq + 1), generator=torch.Generator().manual_seed(1))
    record("shapes", lambda: check_shapes(model, tokens[:, :-1]))
    record("causal", lambda: check_causal(model, tokens[:, :-1]))
    if config.attention == "document":
        record("document", lambda: check_document(model, tokens[:, :-1]))
    else:
        results.append(("document", True, "skipped: model.attention 'causal' reads the whole row"))
    if config.arch == "llama":
        record("rope", lambda: check_rope(model))
    else:  # learned absolute positions: there is no rotation to check, and no relative-position property to expect
        results.append(("rope", True, f"skipped: arch {config.arch!r} has no RoPE (learned absolute positions)"))
    record("init_loss", lambda: check_init_loss(model, tokens))
    model.train()
    record("fwd_bwd_fp32", lambda: check_fwd_bwd(model, tokens, torch.float32))
    record("fwd_bwd_bf16", lambda: check_fwd_bwd(model, tokens, torch.bfloat16))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="training config JSON (its `model` section) or a model config")
    parser.add_argument("--full", action="store_true", help="run every check even on models above 200M parameters")
    args = parser.parse_args(argv)
    try:
        config = ModelConfig.from_json(args.config)
    except (OSError, ValueError) as e:
        raise SystemExit(f"smoke_test_arch: {args.config}: {e}") from None

    results = run_checks(config, args.full)
    print(f"architecture smoke test: {args.config}")
    print(f"  n_layer={config.n_layer} n_embd={config.n_embd} n_head={config.n_head} head_dim={config.head_dim} "
          f"ffn_hidden={config.ffn_hidden} block_size={config.block_size} vocab_size={config.vocab_size}")
    width = max(len(name) for name, _, _ in results)
    for name, ok, detail in results:
        print(f"  {name:<{width}}  {'PASS' if ok else 'FAIL'}  {detail}")
    failed = [name for name, ok, _ in results if not ok]
    print("all checks passed" if not failed else f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
