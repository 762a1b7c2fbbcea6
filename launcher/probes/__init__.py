"""Induction and retrieval probes: what loss curves cannot show, measured at every eval (docs/PROBES.md).

- Induction score: on fixed sequences made of a random token block repeated twice, the mean loss on the first copy
  minus the mean loss on the second copy. A model without induction heads cannot predict random tokens in either
  copy (score ~0); one that copies "what followed this token last time" predicts the second copy (score up to
  ~ln(vocab)).
- Retrieval probe: held-out grounded QA prompts, the passage holding the answer placed so that the answer's first
  token falls in each of `NUM_BUCKETS` position buckets of the context window. Per bucket: exact match of the greedy
  answer, and the answer's mean log-likelihood with the passage and without it (how much the model uses the
  context). For unanswerable prompts: the share answered `NOT_IN_CONTEXT`.

One module per concern, each importing only the ones before it: `items` builds the probe items, `metrics` holds the
sums layout and the metric arithmetic, `run` runs a model on the items. This package re-exports their public names,
so the trainer, `scripts/eval/rag_probe.py` and the experiments run the same code through a narrow interface:

    probes = build_probes(get_tokenizer(), block_size=1024, seed=PROBE_SEED)         # pure data, deterministic
    sums = probe_sums(model, probes, rank, world_size, device)                         # this rank's share
    metrics = finalize(probes, all_reduce(sums))                                       # {"probe/...": float}
    # or in one call: run_probes(model, probes, rank, world_size, device, all_reduce=dist.all_reduce)

The probes' controls live beside them and are imported by name, not re-exported: `synthetic` (tasks whose answers
are known by construction), `tiny_training` (training a tiny model on them) and `trained_control` (the trained
copier's recipe and its compact file).
"""

from launcher.probes.items import (
    DEMO_SOURCES,
    MIN_BLOCK_SIZE,
    NUM_BUCKETS,
    PROBE_SEED,
    ProbeSet,
    RetrievalItem,
    build_probes,
    build_retrieval_items,
    induction_sequences,
    probes_for_block_size,
    training_qa_seed,
)
from launcher.probes.metrics import PREFIX, SUM_NAMES, finalize, probe_summary
from launcher.probes.run import answer_loglik, greedy_answers, probe_sums, run_probes

__all__ = [
    "DEMO_SOURCES", "MIN_BLOCK_SIZE", "NUM_BUCKETS", "PREFIX", "PROBE_SEED", "SUM_NAMES", "ProbeSet", "RetrievalItem",
    "answer_loglik", "build_probes", "build_retrieval_items", "finalize", "greedy_answers", "induction_sequences",
    "probe_sums", "probe_summary", "probes_for_block_size", "run_probes", "training_qa_seed",
]
