"""Build the unified datasets: fetch -> hold back eval/val groups -> tokenize -> decontaminate -> mix both phases
-> pack.

Full build (Hugging Face hub; the local IT-sec + Swiss law corpus must exist, see docs/DATASET.md):
    python scripts/unified_build/build_unified_dataset.py
    # = --sources data/sources/unified_phase1_circuit.json data/sources/unified_from_scratch.json --out-root data

Plan only (sources, budgets, hold-back, budget feasibility from the declared estimates, gated inputs and how to
log in; no network, nothing written; exit 1 when a source cannot supply its budget):
    python scripts/unified_build/build_unified_dataset.py --dry-run

Preflight (opens every input, reads 300 records through formatter and filters, projects available tokens against
the budget; minutes, nothing fetched; exit 1 with one line per problem, or when the hub cannot be reached):
    python scripts/unified_build/build_unified_dataset.py --preflight
A build whose definitions read from the hub runs the same preflight before its first fetch and stops on any
problem; --skip-preflight skips it (then a source that cannot load or meet its budget is found only when the fetch
reaches it, possibly hours into the build). An input it cannot project (no row count, no data files it can
measure) is a problem too, unless named: --accept-unprojected INPUT (repeatable).
The preflight (or the first fetch) locks every hub input that pins no commit to the hub's sha in
<out-root>/inputs.lock.json; later runs and resumes read those commits (delete an entry to move it forward).

Gated inputs (StarCoderData, The Stack): accept the terms on each dataset page, then `hf auth login` once.

Offline demo (a few MB of tokens, under a minute on 2 cores; what `make demo` and the tests build):
    python scripts/unified_build/build_unified_dataset.py --sources data/sources/demo.json --out-root data/demo \
        --block-size 256

One step alone (each resumes from what is on disk):
    python scripts/unified_build/build_unified_dataset.py --steps fetch
    python scripts/unified_build/build_unified_dataset.py --steps holdback,tokenize
    python scripts/unified_build/build_unified_dataset.py --steps decontaminate
    python scripts/unified_build/build_unified_dataset.py --steps mix,pack

The pack step writes each output's grounding-safe packing index for the training block size (default 1024, the
real model's; the CPU demo trains at 256): `--block-size 256`, or several, `--block-size 256 1024`. Retrieval documents
are sized to fit the largest of them (their fetch refetches when it grows). Another block size
later: `python scripts/unified_build/pack_tokens.py DIR --block-size N` (docs/DATASET.md, "Packing").

Inputs are fetched in parallel, one process each (the result does not depend on the count):
    python scripts/unified_build/build_unified_dataset.py --fetch-workers 8

Outputs under --out-root: unified_phase1_circuit/ and unified_6B/ (each with val/ inside),
code_eval_tokenized/, retrieval_eval_tokenized/, general_eval_tokenized/, domain_eval_tokenized/;
intermediate files under <out-root>/unified_work/. Rerunning resumes: complete parts are kept, up-to-date
directories are skipped; work files made under a different config (data/stamps.py) are removed and
rebuilt, one line each. Print a directory's lineage with `python -m data.lineage DIR`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# runnable as a plain script from the repository root
from tqdm import tqdm

from data import build, fetch_rounds, input_lock, preflight
from data.formats import group_field
from data.paths import resolve
from data.source_config import (
    budget_problems,
    fetch_needs,
    gated_inputs,
    load_definitions,
    login_instructions,
    missing_local_paths,
    size_retrieval_documents,
)
from data.token_dataset import TokenDataset, add_packing, sha256_file

DEFAULT_SOURCES = ["data/sources/unified_phase1_circuit.json", "data/sources/unified_from_scratch.json"]
STEPS = ("fetch", "holdback", "tokenize", "decontaminate", "mix", "pack")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--sources", nargs="+", default=DEFAULT_SOURCES,
                    help="source definitions JSON file(s), merged (default: both phases of the real mix)")
    ap.add_argument("--out-root", default="data",
                    help="where the token directories go (default: data; under $RAGLLM_WORKSPACE if set)")
    ap.add_argument("--work-dir", default=None,
                    help="intermediate fetched/split/tokenized parts (default: <out-root>/unified_work)")
    ap.add_argument("--steps", default=",".join(STEPS),
                    help=f"comma-separated subset of {','.join(STEPS)} to run (default: all)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="tokenizer and decontamination (MinHash) processes (default: all cores)")
    ap.add_argument("--fetch-workers", "--fetch_workers", type=int, default=None,
                    help="inputs fetched at the same time, one process each (default: all cores when any input "
                         "streams from the hub, else 1: local inputs are CPU-bound and starting processes costs more "
                         "than it saves); the result does not depend on it (deduplication across inputs runs after "
                         "each round, in definitions order)")
    ap.add_argument("--docs-per-part", type=int, default=None,
                    help="documents per fetched part, the unit of resume and of parallel tokenization "
                         "(default: 20000, or 500 for sources whose total budget is under 100M tokens)")
    ap.add_argument("--max-rounds", type=int, default=8,
                    help="fetch/tokenize rounds per input while its token counts are short of the budget")
    ap.add_argument("--block-size", type=int, nargs="+", default=[1024],
                    help="model.block_size(s) to write the packing index for (default: 1024, the real model's; the CPU "
                         "demo: 256); a trainer reads only the block sizes indexed")
    ap.add_argument("--dry-run", action="store_true",
                    help="print the plan, budget feasibility and gated inputs; touch nothing (exit 1 if infeasible)")
    ap.add_argument("--preflight", action="store_true",
                    help="check every input (open, read --preflight-records records, format, filter, project tokens "
                         "vs budget) and exit: 0 if all pass, 1 with one line per problem; needs the hub")
    ap.add_argument("--skip-preflight", action="store_true",
                    help="do not run the preflight before the first fetch of a build that reads from the hub; risks "
                         "finding a source that cannot load or meet its budget only when its fetch starts, hours in")
    ap.add_argument("--preflight-records", type=int, default=preflight.SAMPLE_RECORDS,
                    help=f"records the preflight reads per input (default {preflight.SAMPLE_RECORDS})")
    ap.add_argument("--accept-unprojected", action="append", default=[], metavar="INPUT",
                    help="let the preflight pass this input although it cannot project its tokens (no row count on "
                         "the card or in the definitions, no data files it can measure); repeatable, one input each")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    bad = [s for s in steps if s not in STEPS]
    if bad:
        ap.error(f"--steps: unknown step(s) {bad}; choose from {','.join(STEPS)}")
    if args.workers < 1:
        ap.error(f"--workers must be >= 1, got {args.workers}")
    if args.fetch_workers is not None and args.fetch_workers < 1:
        ap.error(f"--fetch-workers must be >= 1, got {args.fetch_workers}")
    if args.preflight_records < 1:
        ap.error(f"--preflight-records must be >= 1, got {args.preflight_records}")
    if args.preflight and args.skip_preflight:
        ap.error("--preflight and --skip-preflight contradict each other; give one")
    if any(b < 1 for b in args.block_size):
        ap.error(f"--block-size must be >= 1, got {args.block_size}")
    args.steps = steps
    return args


def print_plan(defs, tg, problems) -> None:
    print(f"definitions: {', '.join(defs.files)}")
    for m in defs.mixes.values():
        print(f"\nmix {m.name}: {m.total_tokens:,} tokens (+ val {m.val_tokens:,})")
        print(f"  {'source':22s} {'%':>6s} {'tokens':>15s} {'category':10s} {'upsample':>8s}  inputs")
        for s, pct in m.percent.items():
            src = defs.sources[s]
            ins = ", ".join(f"{i.name}[{i.loader['type']}:{i.loader.get('path') or i.loader.get('callable')}"
                            f"{':' + i.loader['name'] if i.loader.get('name') else ''} {i.formatter}]"
                            for i in src.inputs)
            print(f"  {s:22s} {pct:6.2f} {m.source_tokens(s):>15,} {src.category:10s} {src.upsample:>8g}  {ins}")
    print("\nhold-back (share of groups, by sha256 of source + group key, before tokenization; group = record "
          "field, or the document text):")
    for s in defs.sources.values():
        groups = ", ".join(f"{i.name}: {group_field(i.formatter, i.formatter_options, i.holdback_group)}"
                           for i in s.inputs)
        print(f"  {s.name:22s} eval {s.eval_share:6.3f} -> {s.eval_set or '-':28s} val {s.val_share:6.3f}  "
              f"groups {groups}")
    print("then training documents that are near duplicates (MinHash Jaccard >= 0.8) of any held-out document are "
          "removed, and the spans of training documents holding a held-out 13-gram (not boilerplate) are cut out "
          "(retrieval documents: removed whole) (step decontaminate)")
    print("\neval sets: " + ", ".join(f"{e.name} ({'+'.join(e.sources)}, min {e.min_tokens:,})"
                                      for e in defs.eval_sets.values()))
    print("\nper input: tokens to fetch (train after upsampling / val / eval minimum):")
    for name, t in tg.items():
        print(f"  {name:22s} {t['train']:>15,} {t['val']:>12,} {t['eval']:>12,}")
    print("\nbudget feasibility (declared available_tokens_estimate vs tokens needed before hold-back):")
    needs = fetch_needs(defs)
    for inp in defs.inputs():
        have = inp.available_tokens
        verdict = "not checked (no estimate)" if have is None else "OK" if have >= needs[inp.name] else "SHORT"
        have_s = "?" if have is None else f"{have:,}"
        print(f"  {inp.name:22s} need {needs[inp.name]:>15,} available {have_s:>15s}  {verdict}")
    login = login_instructions(defs)
    if login:
        print("\n" + "\n".join(login))
    if problems:
        print("\nPREFLIGHT PROBLEMS (a real build stops on these before any download):")
        print("\n".join("  " + p for p in problems))
    else:
        print("\npreflight: OK")


def run_preflight(defs, args, problems: list[str]) -> list[str]:
    """Run the preflight on every input whose local path exists (the others are in `problems` already), print its
    report, and return all problem lines."""
    missing = {p.split("'")[3] for p in problems if "local path" in p}  # "source 'x' input 'y': local path ..."
    names = [i.name for i in defs.inputs() if i.name not in missing]
    unknown = sorted(set(args.accept_unprojected) - {i.name for i in defs.inputs()})
    if unknown:
        raise SystemExit(f"--accept-unprojected {', '.join(unknown)}: no such input in the definitions; inputs: "
                         f"{', '.join(i.name for i in defs.inputs())}")
    checks, found = preflight.run(defs, sample=args.preflight_records, names=names,
                                  accept=frozenset(args.accept_unprojected))
    print(preflight.report(checks, args.preflight_records, total=len(defs.inputs())))
    return problems + found


def lock_hub_inputs(defs, out_root: Path, resolve_now: bool, offline_ok: bool) -> list[str]:
    """Pin the unpinned hub inputs to the commits in `<out_root>/inputs.lock.json`, resolving the missing ones when
    `resolve_now` (data/input_lock.py); prints what it resolved, returns problem lines. An unreachable hub is left to
    the preflight's one-line report when one runs (`offline_ok`), else it stops the build here."""
    try:
        lines, problems = input_lock.lock_inputs(defs, out_root / input_lock.LOCK_NAME,
                                                 preflight.hub_status if resolve_now else None)
    except ValueError as e:  # an unreadable lock file
        raise SystemExit(f"cannot build: {e}") from None
    except Exception as e:
        if not preflight.is_offline_error(e):
            raise
        if offline_ok:
            return []
        raise SystemExit(f"cannot build: the Hugging Face hub ({preflight.HUB}) cannot be reached, so the unpinned "
                         f"hub inputs cannot be locked to a commit ({type(e).__name__}); run where it is "
                         f"reachable") from None
    for line in lines:
        print(line)
    return problems


class ConsoleProgress(fetch_rounds.RoundsProgress):
    """The build's rounds on the console: tqdm bars (none with --quiet), a line per input fetched, per input's
    duplicates of another input, per stale stamp, and what decontamination removed (on stderr)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet

    def bar(self, **kwargs):
        return tqdm(disable=self.quiet, **kwargs)

    def stamp(self, line: str) -> None:
        print(line)

    def fetched(self, bar, name: str, totals: dict) -> None:
        if not self.quiet:
            bar.write(f"  {name}: {totals['documents']:,} documents, {totals['chars']:,} characters from "
                      f"{totals['records_read']:,} records{' (exhausted)' if totals['exhausted'] else ''}")

    def duplicates(self, name: str, removed: int) -> None:
        print(f"  {name}: {removed:,} documents removed as duplicates of another input's")

    def decontaminated(self, removed: dict) -> None:
        near, contained = removed[build.NEAR_DUPLICATE_REASON], removed[build.CONTAINMENT_REASON]
        if near["documents"] and not self.quiet:
            print(f"removed {near['documents']:,} training documents ({near['tokens']:,} tokens) that are "
                  f"near duplicates of held-out documents", file=sys.stderr)
        if contained["tokens"] and not self.quiet:
            print(f"removed {contained['tokens']:,} training tokens holding held-out 13-grams: "
                  f"{contained['documents']:,} documents whole, {contained['documents_cut']:,} cut "
                  f"(per source: the mixes' manifests, filtered.{build.CONTAINMENT_REASON})", file=sys.stderr)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        defs = load_definitions(*args.sources)
    except ValueError as e:
        raise SystemExit(f"error in source definitions: {e}") from None
    try:
        size_retrieval_documents(defs, args.block_size)
    except ValueError as e:
        raise SystemExit(f"error in source definitions: {e}") from None
    tg = build.targets(defs)
    infeasible = budget_problems(defs)
    problems = missing_local_paths(defs) + infeasible
    if args.dry_run:
        print_plan(defs, tg, problems)
        return 1 if infeasible else 0
    out_root = resolve(args.out_root)  # under $RAGLLM_WORKSPACE when set (the Docker image), else the current dir
    if args.preflight or any(s in args.steps for s in fetch_rounds.WORK_STEPS):
        # the preflight and the fetch resolve unpinned hub inputs (the preflight reports an unreachable hub itself);
        # the other steps apply the lock as it is, so their stamps see the loaders the fetch used
        problems += lock_hub_inputs(defs, out_root, resolve_now=args.preflight or "fetch" in args.steps,
                                    offline_ok=args.preflight or not args.skip_preflight)
    if args.preflight:
        found = run_preflight(defs, args, problems)
        if found:
            print(f"\nPREFLIGHT FAILED: {len(found)} problem(s); nothing was fetched:")
            print("\n".join("  " + p for p in found))
            return 1
        print("\npreflight: OK, every input opens, formats and can meet its budget")
        return 0
    if problems:
        raise SystemExit("cannot build:\n" + "\n".join("  " + p for p in problems))
    if gated_inputs(defs) and "fetch" in args.steps:
        print("\n".join(login_instructions(defs)))
        from huggingface_hub import get_token  # a local file/env look-up, no network

        if not get_token():
            raise SystemExit("cannot build: the gated inputs above need a Hugging Face token and none is set; "
                             "follow the steps above, then rerun")
    if "fetch" in args.steps and not args.skip_preflight and any(i.loader["type"] == "hf" for i in defs.inputs()):
        found = run_preflight(defs, args, [])
        if found:
            raise SystemExit(f"preflight failed, nothing was fetched ({len(found)} problem(s); --skip-preflight "
                             f"skips this check at its risk):\n" + "\n".join("  " + p for p in found))
    work_dir = resolve(args.work_dir) if args.work_dir else out_root / "unified_work"
    definitions_info = [{"path": f, "sha256": sha256_file(f)} for f in defs.files]
    command = [sys.executable, *sys.argv] if argv is None else ["build_unified_dataset.py", *argv]
    inputs = defs.inputs()
    try:
        fetch_rounds.run_rounds(defs, tg, work_dir, args.steps, max_rounds=args.max_rounds, workers=args.workers,
                                fetch_workers=args.fetch_workers, docs_per_part=args.docs_per_part,
                                progress=ConsoleProgress(args.quiet))
    except fetch_rounds.FetchStopped as e:  # filter share, schema, loader: one line
        raise SystemExit(f"fetch stopped: {e}") from None
    if "mix" in args.steps and "decontaminate" not in args.steps:
        unchecked = build.undecontaminated_parts(inputs, work_dir)
        if unchecked:
            print(f"WARNING: {len(unchecked)} token parts (e.g. {unchecked[0]}) were never checked for near duplicates "
                  f"of held-out documents; run --steps decontaminate before mixing", file=sys.stderr)
    if "mix" in args.steps:
        total = sum(m.total_tokens + m.val_tokens for m in defs.mixes.values())
        with tqdm(total=total, unit="tok", unit_scale=True, desc="mix", disable=args.quiet) as bar:
            try:
                results = build.mix(defs, work_dir, out_root, definitions_info, command, bar)
            except ValueError as e:
                raise SystemExit(f"mix failed: {e}") from None
        for name, m in results.items():
            print(f"{out_root / name}: {m['num_tokens']:,} tokens (target {m['target_tokens']:,})")
            for s, v in m["sources"].items():
                dev = (v["actual_tokens"] - v["target_tokens"]) / max(1, v["target_tokens"])
                print(f"    {s:22s} target {v['target_tokens']:>13,} actual {v['actual_tokens']:>13,} "
                      f"({dev:+.2%}) repeats {v['repeats']}")
            if (out_root / name / "val").is_dir():
                print(f"    val/: {TokenDataset(out_root / name / 'val').num_tokens:,} tokens")
            min_tokens = next((e.min_tokens for e in defs.eval_sets.values() if e.name == name), 0)
            if m["num_tokens"] < min_tokens:
                print(f"    WARNING: {name} has {m['num_tokens']:,} tokens, below its min_tokens {min_tokens:,}")
    if "pack" in args.steps:
        pack_outputs(defs, out_root, args.block_size)
    return 0


def pack_outputs(defs, out_root: Path, block_sizes: list[int]) -> None:
    """Add the packing index for each block size to every output (a mix's val/ too); up-to-date ones are kept."""
    for d in build.output_dirs(defs, out_root):
        if not (d / "manifest.json").is_file():
            raise SystemExit(f"pack: {d} has not been built; run the mix step first (--steps mix,pack)")
        for b in block_sizes:
            try:
                e = add_packing(d, b)
            except ValueError as err:
                raise SystemExit(f"pack failed: {err}") from None
            print(f"{d}: block_size {b}: {e['num_samples']:,} samples, padding {100 * e['padding_share']:.2f}%, "
                  f"{e['short_documents']:,} documents whole, {e['long_documents']:,} long ones split")


if __name__ == "__main__":
    raise SystemExit(main())
