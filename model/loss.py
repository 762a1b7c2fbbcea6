"""Linear + cross-entropy in row chunks: the loss of `F.cross_entropy((h @ W.T).float(), targets)` without the full
(rows, vocab) logits.

At the base config's micro-batch (12 x 1024 rows, vocabulary 50,304) the plain path holds the bf16 logits (1.2 GB)
through backward and makes a 2.5 GB fp32 copy for the loss, plus the fp32 gradient of that copy. Here the rows are split
into chunks; each chunk's logits are computed, turned into its loss and its logits gradient (softmax - one-hot) at
once, and that gradient is multiplied into the input and weight gradients before the next chunk, so the largest
transient is one chunk of logits. The gradients are computed during the forward, as Liger-Kernel's fused linear
cross-entropy does (https://github.com/linkedin/Liger-Kernel, src/liger_kernel/ops/fused_linear_cross_entropy.py:
chunk size next_power_of_2(ceil(rows / ceil(vocab / hidden))), which bounds one chunk's logits to about the size of
the input), so no logit is computed twice; the backward only scales them by the incoming gradient.

Precision is that of the plain path: the chunk's logits are computed in the input dtype and upcast to fp32 for
log-softmax; the logits gradient goes back to the input dtype for the two matmuls (as autograd's `.float()` backward
does); the weight gradient is summed over chunks in fp32 and cast to the weight's dtype once at the end.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE_INDEX = -1  # the trainer's padding target: positions with it add nothing to the loss or the gradients


# Floor on one chunk's logits, in elements (32 MiB of fp32): Liger's rule alone gives a small model one-row chunks
# (hidden 64, vocabulary 50,304: 786 chunks of ~1 row), and a Python loop of one-row matmuls is slower than the
# full logits it avoids. The floor changes nothing at the 750M shape (512 rows x 50,304 is already above it).
MIN_CHUNK_ELEMENTS = 1 << 23


def chunk_rows(rows: int, hidden: int, vocab: int) -> int:
    """Rows per chunk: a power of two with chunk x vocab about rows x hidden (Liger's rule, see the module doc),
    but at least MIN_CHUNK_ELEMENTS logits, and at most all rows."""
    chunks = math.ceil(vocab / hidden)
    liger = 1 << max(0, math.ceil(rows / chunks) - 1).bit_length()
    floor = 1 << max(0, math.ceil(MIN_CHUNK_ELEMENTS / vocab) - 1).bit_length()
    return min(rows, max(liger, floor))


def _chunk_loss_and_grad(logits: torch.Tensor, target: torch.Tensor, scale: torch.Tensor, need_grad: bool):
    """Sum of the chunk's token losses (fp32) and, when `need_grad`, d(loss * scale)/d(logits) in fp32."""
    logits32 = logits.float()
    logprobs = torch.log_softmax(logits32, dim=-1)  # (rows, vocab) fp32, this chunk only
    valid = target != IGNORE_INDEX
    safe_target = target.clamp(min=0)
    token_loss = -logprobs.gather(1, safe_target[:, None]).squeeze(1) * valid
    if not need_grad:
        return token_loss.sum(), None
    grad = logprobs.exp_()  # softmax, reusing the buffer
    grad.scatter_add_(1, safe_target[:, None], -valid[:, None].to(grad.dtype))
    grad.mul_((valid.to(grad.dtype) * scale)[:, None])
    return token_loss.sum(), grad


def _addmm_fp32(accumulator: torch.Tensor, a: torch.Tensor, b: torch.Tensor):
    """accumulator (fp32) += a @ b, where a and b may be bf16.

    On CUDA, torch >= 2.8's `addmm(..., out_dtype=torch.float32, out=...)` accumulates the bf16 product straight into
    the fp32 buffer (Liger-Kernel's fp32 weight-gradient path, same file as in the module doc). Elsewhere (CPU, older
    torch) the product is formed in the operands' dtype and added in fp32, Liger's "legacy fallback".
    """
    if accumulator.is_cuda and a.dtype in (torch.bfloat16, torch.float16):
        try:
            torch.addmm(accumulator, a, b, out_dtype=torch.float32, out=accumulator)
            return
        except (TypeError, RuntimeError):  # torch < 2.8 (no out_dtype) or a GPU without it: the fallback below
            pass
    if a.dtype == accumulator.dtype:
        accumulator.addmm_(a, b)
    else:
        accumulator += torch.mm(a, b).float()


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, chunk: int, track: bool):
        rows = hidden.shape[0]
        # `track`: grad mode was on at the call. Inside forward it is always off, and `needs_input_grad` follows the
        # inputs' requires_grad even under torch.no_grad() (measured, torch 2.13), so without it an evaluation would
        # compute and hold both gradients (the fp32 weight gradient alone is vocab x n_embd x 4 bytes, 257 MB at 750M).
        need_h, need_w = track and ctx.needs_input_grad[0], track and ctx.needs_input_grad[1]
        need_grad = need_h or need_w
        # A device tensor: no host read (docs/DESIGN.md, "The GPU never waits on the host").
        n_valid = (target != IGNORE_INDEX).sum()
        # An all-ignored batch gives NaN, as F.cross_entropy's mean over zero targets does.
        scale = 1.0 / n_valid.to(torch.float32)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w32 = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, rows, chunk):
            h = hidden[start:start + chunk]
            logits = h @ weight.t()  # (chunk, vocab) in the input dtype, as nn.Linear computes it
            loss_sum, grad = _chunk_loss_and_grad(logits, target[start:start + chunk], scale, need_grad)
            del logits
            total += loss_sum
            if need_grad:
                grad = grad.to(hidden.dtype)
                if need_h:
                    torch.mm(grad, weight, out=grad_h[start:start + chunk])
                if need_w:
                    _addmm_fp32(grad_w32, grad.t(), h)
        ctx.save_for_backward(grad_h, grad_w32)
        ctx.weight_dtype = weight.dtype
        return total * scale

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_h, grad_w32 = ctx.saved_tensors
        dh = (grad_h * grad_loss.to(grad_h.dtype)) if grad_h is not None else None
        dw = (grad_w32 * grad_loss).to(ctx.weight_dtype) if grad_w32 is not None else None
        return dh, dw, None, None, None


def chunked_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                                 chunk: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `target` over targets != -1 (fp32 scalar).

    hidden: (rows, n_embd); weight: (vocab, n_embd); target: (rows,) int64. Equal, within fp32 rounding, in value
    and in the gradients of hidden and weight, to `F.cross_entropy((hidden @ weight.T).float(), target,
    ignore_index=-1)`. Not twice differentiable (the gradients are computed in the forward).
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"chunked_linear_cross_entropy: hidden {tuple(hidden.shape)} and weight "
                         f"{tuple(weight.shape)} must be (rows, n) and (vocab, n)")
    if target.shape != hidden.shape[:1]:
        raise ValueError(f"chunked_linear_cross_entropy: target {tuple(target.shape)} must be ({hidden.shape[0]},)")
    chunk = chunk or chunk_rows(hidden.shape[0], hidden.shape[1], weight.shape[0])
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, target, chunk, torch.is_grad_enabled())


@torch.no_grad()
def chunked_token_losses(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                         chunk: int | None = None) -> torch.Tensor:
    """Each row's cross-entropy (rows,) fp32, 0 where the target is -1: what evaluation sums per token (bits per byte
    weighs tokens by their bytes). The same chunks and fp32 log-softmax as `chunked_linear_cross_entropy`, no grad."""
    chunk = chunk or chunk_rows(hidden.shape[0], hidden.shape[1], weight.shape[0])
    out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk):
        logprobs = torch.log_softmax((hidden[start:start + chunk] @ weight.t()).float(), dim=-1)
        t = target[start:start + chunk]
        out[start:start + chunk] = -logprobs.gather(1, t.clamp(min=0)[:, None]).squeeze(1) * (t != IGNORE_INDEX)
    return out


def plain_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The reference: full logits, fp32 copy, `F.cross_entropy` (what the model computed before the chunked loss)."""
    return F.cross_entropy((hidden @ weight.t()).float(), target, ignore_index=IGNORE_INDEX)


__all__ = ["chunked_linear_cross_entropy", "chunked_token_losses", "plain_linear_cross_entropy", "chunk_rows",
           "IGNORE_INDEX"]
