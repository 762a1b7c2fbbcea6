"""Probe metric arithmetic: the layout of the per-rank sums vector, the metrics computed from the all-reduced sums,
and the one console line of the headline numbers.

Every rank adds its share of the fixed items into one vector of sums and counts (`SUM_NAMES`, in that order); the
caller all-reduces it, so `finalize` gives the same numbers at any world size. Keys of the metrics are prefixed
`probe/` (`PREFIX`), nan where a count is 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from launcher.probes.items import NUM_BUCKETS, ProbeSet

PREFIX = "probe/"


def _sum_names() -> tuple[str, ...]:
    names = ["induction_first", "induction_second", "induction_n"]
    for b in range(NUM_BUCKETS):
        names += [f"em_{b}", f"ll_with_{b}", f"ll_without_{b}", f"n_{b}"]
    return (*names, "nic", "nic_n")


SUM_NAMES = _sum_names()  # names of the entries of the sums vector, in order


def finalize(probes: ProbeSet, summed: Sequence[float]) -> dict[str, float]:
    """Metrics from the all-reduced sums, keys prefixed `probe/` (nan where a count is 0)."""
    s = dict(zip(SUM_NAMES, summed, strict=True))

    def div(a: float, n: float) -> float:
        return a / n if n else math.nan

    first = div(s["induction_first"], s["induction_n"])
    second = div(s["induction_second"], s["induction_n"])
    out = {"induction_score": first - second, "induction_loss_first": first, "induction_loss_second": second}
    em = [div(s[f"em_{b}"], s[f"n_{b}"]) for b in range(NUM_BUCKETS)]
    for b in range(NUM_BUCKETS):
        out[f"retrieval_em_b{b}"] = em[b]
        out[f"retrieval_ll_with_b{b}"] = div(s[f"ll_with_{b}"], s[f"n_{b}"])
        out[f"retrieval_ll_without_b{b}"] = div(s[f"ll_without_{b}"], s[f"n_{b}"])
    n = sum(s[f"n_{b}"] for b in range(NUM_BUCKETS))
    valid = [e for e in em if not math.isnan(e)]
    out["retrieval_em"] = div(sum(s[f"em_{b}"] for b in range(NUM_BUCKETS)), n)
    out["retrieval_em_worst_bucket"] = min(valid) if valid else math.nan
    out["retrieval_em_best_bucket"] = max(valid) if valid else math.nan
    # Position invariance: worst over best bucket; 1.0 = the same accuracy everywhere (undefined when all 0).
    out["retrieval_position_invariance"] = div(out["retrieval_em_worst_bucket"], out["retrieval_em_best_bucket"])
    out["retrieval_ll_with"] = div(sum(s[f"ll_with_{b}"] for b in range(NUM_BUCKETS)), n)
    out["retrieval_ll_without"] = div(sum(s[f"ll_without_{b}"] for b in range(NUM_BUCKETS)), n)
    out["retrieval_ll_gain"] = out["retrieval_ll_with"] - out["retrieval_ll_without"]
    out["unanswerable_not_in_context"] = div(s["nic"], s["nic_n"])
    return {PREFIX + k: v for k, v in out.items()}


def probe_summary(metrics: dict[str, float]) -> str:
    """One console line of the headline probe numbers."""
    m = {k.removeprefix(PREFIX): v for k, v in metrics.items()}
    return (f"probes: induction {m['induction_score']:.3f} | retrieval EM {m['retrieval_em']:.2f} (worst bucket "
            f"{m['retrieval_em_worst_bucket']:.2f}, best {m['retrieval_em_best_bucket']:.2f}) | LL gain from the "
            f"passage {m['retrieval_ll_gain']:.3f} | unanswerable -> not in context "
            f"{m['unanswerable_not_in_context']:.2f}")
