"""Audit sources or token directories: the numbers behind the source audit decisions.

For each SOURCE_NAME (read through the build's own loader and formatter, first N documents in stream order) or
token DIR (a seeded random sample of N whole documents), prints one column of: tokens per document, share
longer than the context, duplicated lines, exact / near-duplicate documents, language shares, quote-reply /
front matter / changelog / grounded-QA structure, copyable-token shares for k = 1..4 with the mean distance back
(the measurable "induction signal"), and, for sources, what each of the source's filters would remove.
Definitions of every number: docs/DATASET.md ("Source audits").

    python scripts/unified_build/audit_source.py demo_python demo_qa demo_prose demo_domain \\
        --sources data/sources/demo.json --out-root data/demo      # JSON: data/demo/audits/<source>.json
    python scripts/unified_build/audit_source.py data/demo/unified_6B   # JSON: data/demo/unified_6B/audit.json
    python scripts/unified_build/audit_source.py github_readme -n 2000  # real definitions (needs the HF hub)
    python scripts/unified_build/audit_source.py demo_qa --sources data/sources/demo.json --markdown

A token DIR's JSON goes next to its manifest (DIR/audit.json); a source's to <out-root>/audits/<source>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# runnable as a plain script from the repository root
from data.atomic import atomic_write_text
from data.audit import audit_documents, format_table, sample_source, token_dir_documents
from data.source_config import load_definitions

DEFAULT_SOURCES = ["data/sources/unified_phase1_circuit.json", "data/sources/unified_from_scratch.json"]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("targets", nargs="+", metavar="SOURCE_NAME|DIR",
                    help="source names from the definitions, or token directories (hold manifest.json)")
    ap.add_argument("--sources", nargs="+", default=DEFAULT_SOURCES,
                    help="source definitions JSON file(s) for SOURCE_NAME targets (default: both phases of the mix)")
    ap.add_argument("-n", "--num-docs", type=int, default=1000, help="documents sampled per target (default 1000)")
    ap.add_argument("--context", type=int, default=1024,
                    help="context window for the 'longer than context' share (default 1024, the model's block_size)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed for token directories (default 0)")
    ap.add_argument("--out-root", default="data", help="source audits go to <out-root>/audits/ (default: data)")
    ap.add_argument("--no-write", action="store_true", help="print only; write no JSON")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown (for docs/DATASET.md)")
    args = ap.parse_args(argv)
    if args.num_docs < 1:
        ap.error(f"-n/--num-docs must be >= 1, got {args.num_docs}")
    return args


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


def audit_target(target: str, args, defs_cache: dict) -> tuple[str, dict, Path]:
    """(column name, audit, where its JSON goes). SystemExit with the fix for every bad input."""
    path = Path(target)
    if path.is_dir():
        if not (path / "manifest.json").is_file():
            raise SystemExit(f"{path}: no manifest.json; pass a token directory built by "
                             f"scripts/unified_build/build_unified_dataset.py (e.g. data/demo/unified_6B), "
                             f"or a source name")
        try:
            docs, info = token_dir_documents(path, args.num_docs, args.seed)
        except ValueError as e:
            raise SystemExit(f"{path}: {e}") from None
        if not docs:
            raise SystemExit(f"{path}: no whole (EOT-terminated) documents to audit; the directory is empty")
        audit = audit_documents(token_docs=docs, context=args.context)
        audit["target"] = {"kind": "token_dir", "path": str(path), "documents_in_dir": info["documents"],
                           "sample": "seeded random whole documents", "seed": args.seed}
        return path.name, audit, path / "audit.json"
    if "defs" not in defs_cache:
        try:
            defs_cache["defs"] = load_definitions(*args.sources)
        except ValueError as e:
            raise SystemExit(f"error in source definitions: {e}") from None
    defs = defs_cache["defs"]
    if target not in defs.sources:
        raise SystemExit(f"{target!r} is neither a token directory nor a source in {', '.join(defs.files)}; "
                         f"known sources: {', '.join(sorted(defs.sources))}")
    try:
        texts, info = sample_source(defs, target, args.num_docs)
    except (OSError, ValueError) as e:
        raise SystemExit(f"source {target!r}: cannot read it ({e})") from None
    if not texts:
        raise SystemExit(f"source {target!r} yielded no documents: {info['records_read']:,} records read, skipped "
                         f"{info['skipped'] or 'none'}; check its loader path/config and formatter fields")
    audit = audit_documents(texts=texts, context=args.context, filters=defs.sources[target].filters,
                            paths=info["paths"])
    audit["target"] = {"kind": "source", "source": target, "definitions": defs.files,
                       "records_read": info["records_read"], "skipped_by_formatter": info["skipped"],
                       "sample": "first documents in stream order"}
    return target, audit, Path(args.out_root) / "audits" / f"{target}.json"


def main(argv=None) -> int:
    args = parse_args(argv)
    audits, cache = {}, {}
    for target in args.targets:
        t0 = time.perf_counter()
        name, audit, out = audit_target(target, args, cache)
        audit["seconds"] = round(time.perf_counter() - t0, 2)
        audits[name] = audit
        if not args.no_write:
            _write_json(out, audit)
            print(f"{name}: {audit['documents']:,} documents in {audit['seconds']} s -> {out}", file=sys.stderr)
    print(format_table(audits, markdown=args.markdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
