"""Scout a training recipe for a retrieval model the probe can read: train a tiny `model.transformer.Transformer` on
synthetic grounded QA in the pipeline's retrieval template, probe it on held-out items with the real retrieval probe
(`launcher.probes.run_probes` on `build_probes(seed=PROBE_SEED)`), and log both as it trains. The missing
piece was a trained model that reaches high exact match; docs/PROBES.md ("Scouting") lists what was tried.

Data (`launcher.probes.synthetic.qa_session_rows`): fresh rows every step, each one context of 2-11 facts
("Anna owes 47.") about distinct names and up to 4 questions about it, every answer supervised. The probe items use
the same fact language (`qa_records` with PROBE_SEED), laid out by the probe's own builder at block 64.

    python scripts/experiments/retrieval_scout.py --steps 2000 --out out/scout/a           # 64 wide, lr 3e-3
    python scripts/experiments/retrieval_scout.py --width 128 --lr 1e-3 --steps 15000 --out out/scout/b --save
    # the smallest matching task: 2 facts, one relation, 8 names, one question per row
    python scripts/experiments/retrieval_scout.py --names 8 --relations 1 --facts 2 2 --questions 1 --out out/scout/c
    # on a GPU, without the restricted softmax
    python scripts/experiments/retrieval_scout.py --device cuda --full-softmax --batch 256 --out out/scout/gpu

Writes `<out>/scout.jsonl` (one line per log interval: loss and the answer accuracy on the training batch; per eval
the probe's exact match per bucket, "not in the context" share and log-likelihood gain) and, with `--save`, the
model's state dict at each eval (`<out>/step_<N>.pt`, loadable with `Transformer.load_state_dict`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from data.tokenizer import get_tokenizer
from launcher.probes import NUM_BUCKETS, PROBE_SEED, build_probes, run_probes
from launcher.probes.synthetic import NAMES, RELATIONS, VALUES, qa_records, qa_session_rows, task_token_ids
from launcher.probes.tiny_training import make_batch, restricted_output, train_steps
from model.config import ModelConfig
from model.transformer import Transformer

ROOT = Path(__file__).resolve().parents[2]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory (scout.jsonl, checkpoints)")
    p.add_argument("--arch", choices=("llama", "gpt2"), default="llama")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--tied", action="store_true",
                   help="tie input and output embeddings (default untied: docs/PROBES.md, scout M)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=32, help="rows per step")
    p.add_argument("--max-len", type=int, default=128, help="tokens per training row (the model's block size)")
    p.add_argument("--names", type=int, default=len(NAMES), help=f"use the first N of the {len(NAMES)} names")
    p.add_argument("--relations", type=int, default=len(RELATIONS), help="use the first N of the 4 relations")
    p.add_argument("--facts", type=int, nargs=2, default=(2, 11), metavar=("MIN", "MAX"), help="facts per context")
    p.add_argument("--questions", type=int, default=4, help="questions per row")
    p.add_argument("--dense", action="store_true", help="also supervise every other position (language-model loss)")
    p.add_argument("--full-softmax", action="store_true", help="train over the whole vocabulary (default: the task's "
                   "token ids only, ~3x cheaper on a CPU)")
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--save", action="store_true", help="save the state dict at each eval")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: several scouts side by side)")
    args = p.parse_args(argv)
    if not 1 <= args.names <= len(NAMES) or not 1 <= args.relations <= len(RELATIONS):
        p.error(f"--names must be 1..{len(NAMES)} and --relations 1..{len(RELATIONS)}")
    if args.names < 2:
        p.error("--names must be >= 2: the probe's filler sentences are about other names")
    return args


def held_out_questions(tokenizer, names, relations, count: int = 200) -> list[tuple[list[int], int, list[str]]]:
    """Answerable first questions of fresh rows (seed 12345, never a training seed's stream): (prompt ids, the answer's
    token id, each context fact's kind: "gold", "same_name" (the asked name, another relation), "same_relation"
    (another name, the asked relation) or "neither"), to see which facts the model's answer mass goes to."""
    rows, _ = qa_session_rows(np.random.Generator(np.random.PCG64(12345)), tokenizer, count, questions=1,
                              unanswerable_share=0.0, names=names, relations=relations)
    out = []
    for row in rows:
        text = tokenizer.decode(row[:-1])
        prompt_text = text.split("Answer:")[0] + "Answer:"
        context = prompt_text.split("\n\nQuestion:")[0]
        name, relation = re.search(r"Question: (\w+) (\w+)\?", prompt_text).groups()
        kinds = {}
        for a, r, v in re.findall(r"(\w+) (\w+) (\d+)\.", context):
            kind = ("gold" if r == relation else "same_name") if a == name else (
                "same_relation" if r == relation else "neither")
            token = tokenizer.encode_ordinary(f" {v}")[0]
            if kinds.get(token) != "gold":  # a value stated twice counts once, as gold if it is the answer
                kinds[token] = kind
        gold = next(t for t, k in kinds.items() if k == "gold")
        out.append((tokenizer.encode_ordinary(prompt_text), gold, kinds))
    return out


def answer_mass(model, questions, columns: torch.Tensor, device: str) -> dict:
    """Mean probability per context fact of each kind at the answer position, under the softmax over the task's
    tokens (`columns`), and the share of questions whose most likely task token is the gold number. Matching by
    name shows as same_name > neither, by relation as same_relation > neither; a lookup puts the mass on gold."""
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    correct = 0
    model.eval()
    with torch.no_grad():
        for prompt, gold, kinds in questions:
            logits, _ = model(torch.tensor([prompt], device=device),
                              logits_index=torch.tensor([[len(prompt) - 1]], device=device))
            logits = logits[0, 0].float()
            task = logits[columns] if logits.numel() > columns.numel() else logits
            probs = dict(zip(columns.tolist(), torch.softmax(task, -1).tolist(), strict=True))
            correct += int(columns[int(task.argmax())]) == gold
            for token, kind in kinds.items():
                totals[kind] = totals.get(kind, 0.0) + probs[token]
                counts[kind] = counts.get(kind, 0) + 1
    model.train()
    mass = {f"mass_per_{k}_fact": round(totals[k] / counts[k], 4) for k in sorted(totals)}
    return {**mass, "held_out_accuracy": round(correct / len(questions), 3)}


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    tokenizer = get_tokenizer()
    names, relations = NAMES[: args.names], RELATIONS[: args.relations]
    # The probe's records need >= 2 relations (one stated, one to ask unanswerably); with --relations 1 the held-out
    # items use two, so their answerable questions are still about the trained relation only if the model matches it.
    probes = build_probes(tokenizer, 64, seed=PROBE_SEED, per_bucket=4, unanswerable_per_bucket=2, induction_vocab=256,
                          records=list(qa_records(800, PROBE_SEED, names=names,
                                                  relations=RELATIONS[: max(2, args.relations)])))
    torch.manual_seed(args.seed)
    model = Transformer(ModelConfig(n_embd=args.width, n_head=args.heads, n_layer=args.layers,
                                    block_size=args.max_len, dropout=0.0, fused_kernels=False, arch=args.arch,
                                    tie_weights=args.tied)).to(args.device)
    rng = np.random.Generator(np.random.PCG64(args.seed + 1))
    questions = held_out_questions(tokenizer, names, relations)
    columns = torch.tensor(task_token_ids(tokenizer, names, relations), device=args.device)
    numbers = torch.tensor(sorted(tokenizer.encode_ordinary(f" {v}")[0] for v in VALUES), device=args.device)
    log = open(out / "scout.jsonl", "a")
    start = time.time()
    state: dict = {}

    def write(record: dict) -> None:
        record["seconds"] = round(time.time() - start, 1)
        log.write(json.dumps(record) + "\n")
        log.flush()
        print(json.dumps(record), flush=True)

    def next_batch(step: int):
        rows, sup = qa_session_rows(rng, tokenizer, args.batch, tuple(args.facts), args.questions, names=names,
                                    relations=relations, max_len=args.max_len)
        answers = make_batch(rows, sup, args.max_len)
        state["answers"] = answers
        if args.dense:
            sup = [list(range(len(r) - 1)) for r in rows]
        b = make_batch(rows, sup, args.max_len)
        b.idx, b.index = b.idx.to(args.device), b.index.to(args.device)
        b.targets = state["to_columns"](b.targets.to(args.device))
        return b

    def on_step(step: int, loss: float) -> None:
        done = step + 1
        if done % args.log_every == 0:
            a = state["answers"]
            with torch.no_grad():
                logits, _ = model(a.idx.to(args.device), logits_index=a.index.to(args.device))
            targets = a.targets.to(args.device)
            is_number = torch.isin(targets, numbers)
            predicted = state["from_columns"](logits.argmax(-1))
            write({"step": done, "loss": round(loss, 4),
                   "answer_number_accuracy": round(float((predicted[is_number] == targets[is_number]).float().mean()),
                                                   3)})
            model.train()
        if done % args.eval_every == 0 or done == args.steps:
            with state["full_vocabulary"]():
                metrics = run_probes(model, probes, 0, 1, args.device)
                if args.save:
                    torch.save(model.state_dict(), out / f"step_{done}.pt")
            em = [metrics[f"probe/retrieval_em_b{b}"] for b in range(NUM_BUCKETS)]
            write({"step": done, "probe_em_by_bucket": em, "probe_em": float(np.mean(em)),
                   "not_in_context": metrics["probe/unanswerable_not_in_context"],
                   "ll_gain": round(metrics["probe/retrieval_ll_gain"], 3),
                   **answer_mass(model, questions, columns, args.device)})
            model.train()

    if args.full_softmax:
        from contextlib import nullcontext

        state.update(to_columns=lambda t: t, from_columns=lambda c: c, full_vocabulary=nullcontext)
        train_steps(model, next_batch, args.steps, lr=args.lr, warmup=args.warmup, weight_decay=args.weight_decay,
                    on_step=on_step)
    else:
        full = model.output

        class _FullVocabulary:  # the probes decode over every token: lift the restriction while they run
            def __enter__(self):
                state["restricted"], model.output = model.output, full

            def __exit__(self, *exc):
                model.output = state["restricted"]

        with restricted_output(model, columns.tolist()) as to_columns:
            state.update(to_columns=to_columns, from_columns=lambda c: columns[c], full_vocabulary=_FullVocabulary)
            train_steps(model, next_batch, args.steps, lr=args.lr, warmup=args.warmup,
                        weight_decay=args.weight_decay, on_step=on_step)
    log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
