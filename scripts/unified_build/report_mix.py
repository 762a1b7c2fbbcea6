"""Report built mixes: category and source shares (target vs actual) and the measured signal coverage.

For each MIX_DIR: the shares from its manifest, then an audit of a sample of each source's documents AS BUILT
(the files under MIX_DIR/<source>/), weighted by the source's token share: the measured version of the data plan's
phase 1 signal coverage table. Induction = share of the mix's tokens an ideal induction head would predict
(copyable at k = 4: the 4 tokens before it and the token itself occurred earlier in the same document); retrieval
= share of tokens in grounded / unanswerable QA documents (the retrieval template) and share of copyable tokens
whose nearest earlier occurrence is >= 128 tokens back (long-range copying). Retrieval sources also get the share
of unanswerable questions among their QA documents, per input (SQuAD v2: ~20% planned).

Eval contamination: for each mix and each eval set (default: every `*_eval_tokenized` directory next to the
mixes), the share of sampled eval documents with a near duplicate in the mix (MinHash Jaccard >= 0.8) and the share
of their token 13-gram windows found anywhere in the mix, all, beyond boilerplate (13-grams seen fewer than 10
times in the mix), and of those the ones in copied passages (runs covering >= 32 tokens: what the build's
containment step cuts), in one pass over the mix's tokens. Details: docs/DATASET.md.
Packing, per indexed block size: the padding share of the samples, and the share of retrieval documents whose
passage, question and answer lie inside one training sample, under the old fixed windows and under the packing
(docs/DATASET.md, "Packing").

    python scripts/unified_build/report_mix.py data/demo/unified_phase1_circuit data/demo/unified_6B
    python scripts/unified_build/report_mix.py data/unified_phase1_circuit data/unified_6B -n 2000
    python scripts/unified_build/report_mix.py data/unified_6B --eval-dirs data/retrieval_eval_tokenized
    python scripts/unified_build/report_mix.py data/unified_6B --no-contamination    # shares and signals only

Writes <out-dir>/mix_report.json and <out-dir>/mix_report.png (default out-dir: the mixes' parent directory).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# runnable as a plain script from the repository root
from data.atomic import atomic_write, atomic_write_text
from data.audit import audit_documents, eval_contamination, token_dir_documents
from data.quality import grounded_answer
from data.source_config import CATEGORIES
from data.token_dataset import TokenDataset, grounding_report
from data.tokenizer import get_tokenizer

# The data plan's estimated true share of each signal (% of tokens), by the mix directory it describes.
PLAN_ESTIMATES = {"unified_phase1_circuit": {"induction": 70.0, "retrieval": 44.0},
                  "unified_6B": {"induction": 43.0, "retrieval": 33.0}}
SIGNALS = {  # name: (label, category whose share is the planned "labeled %", how the measured number is read)
    "induction": ("code", "copyable k=4"),
    "retrieval": ("retrieval", "QA-template tokens"),
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("mix_dirs", nargs="+", metavar="MIX_DIR", help="built mix directories (phase 1, phase 2, ...)")
    ap.add_argument("-n", "--num-docs", type=int, default=500,
                    help="documents sampled per source of each mix (default 500)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    ap.add_argument("--out-dir", default=None, help="where mix_report.json/.png go (default: the mixes' parent)")
    ap.add_argument("--no-png", action="store_true", help="skip the chart")
    ap.add_argument("--eval-dirs", nargs="+", default=None, metavar="EVAL_DIR",
                    help="eval token directories to check each mix against (default: every *_eval_tokenized "
                         "directory with a manifest.json next to the first mix)")
    ap.add_argument("--no-contamination", action="store_true",
                    help="skip the eval-contamination check (it reads every token of each mix once)")
    args = ap.parse_args(argv)
    if args.num_docs < 1:
        ap.error(f"-n/--num-docs must be >= 1, got {args.num_docs}")
    if args.eval_dirs:
        missing = [d for d in args.eval_dirs if not (Path(d) / "manifest.json").is_file()]
        if missing:
            ap.error(f"--eval-dirs: no manifest.json in {missing}; pass eval directories built by "
                     f"scripts/unified_build/build_unified_dataset.py (e.g. data/demo/retrieval_eval_tokenized)")
    return args


def default_eval_dirs(mix_dir: Path) -> list[Path]:
    return sorted(p for p in mix_dir.resolve().parent.glob("*_eval_tokenized") if (p / "manifest.json").is_file())


def unanswerable_shares(directory: Path, source: str, inputs: dict, num_docs: int, seed: int) -> dict:
    """Per input of a retrieval source: share of unanswerable questions among its QA-template documents, on a
    sample of `num_docs` whole documents of the input's files in the mix (None without QA documents)."""
    enc, out = get_tokenizer(), {}
    for inp in inputs:
        docs, _ = token_dir_documents(directory, num_docs, seed, prefix=f"{source}/{inp}-")
        kinds = [grounded_answer(t) for t in enc.decode_batch([d.tolist() for d in docs])]
        qa = [k for k in kinds if k is not None]
        out[inp] = {"qa_documents": len(qa), "unanswerable_share": qa.count("unanswerable") / len(qa) if qa else None}
    return out


def report_mix(directory: Path, num_docs: int, seed: int, eval_dirs: list[Path] | None = None) -> dict:
    """Shares and share-weighted audit numbers of one mix (ValueError naming the directory on bad input)."""
    if not (directory / "manifest.json").is_file():
        raise ValueError(f"{directory}: no manifest.json; pass a mix directory built by "
                         f"scripts/unified_build/build_unified_dataset.py (e.g. data/demo/unified_6B)")
    manifest = TokenDataset(directory).manifest
    sources = manifest.get("sources")
    if not sources:
        raise ValueError(f"{directory}: the manifest has no per-source table; not a mix built by this pipeline")
    total_target = sum(v["target_tokens"] for v in sources.values()) or 1
    total_actual = sum(v["actual_tokens"] for v in sources.values()) or 1
    rows, categories = {}, {c: {"target": 0.0, "actual": 0.0} for c in sorted(CATEGORIES)}
    for name, v in sources.items():
        docs, info = token_dir_documents(directory, num_docs, seed, prefix=f"{name}/")
        audit = audit_documents(token_docs=docs) if docs else None
        rows[name] = {"category": v["category"], "target_share": v["target_tokens"] / total_target,
                      "actual_share": v["actual_tokens"] / total_actual, "repeats": v.get("repeats"),
                      "filtered": v.get("filtered", {}), "documents_in_mix": info["documents"], "audit": audit}
        if v["category"] == "retrieval" and docs:
            rows[name]["unanswerable"] = unanswerable_shares(directory, name, v.get("inputs", {}), num_docs, seed)
        categories[v["category"]]["target"] += rows[name]["target_share"]
        categories[v["category"]]["actual"] += rows[name]["actual_share"]

    def weighted(get) -> float:
        return sum(r["actual_share"] * get(r["audit"]) for r in rows.values() if r["audit"])

    measured = {f"copyable_k{k}": weighted(lambda a, k=k: a["copyable"][str(k)]["share"]) for k in (1, 2, 3, 4)}
    measured["long_range_copy_k4"] = weighted(lambda a: a["copyable"]["4"]["long_range_share"])
    measured["qa_template_tokens"] = weighted(lambda a: a["structure"]["qa_token_share"])
    contributions = {s: {"copyable_k4": r["actual_share"] * r["audit"]["copyable"]["4"]["share"],
                         "qa_template_tokens": r["actual_share"] * r["audit"]["structure"]["qa_token_share"]}
                     for s, r in rows.items() if r["audit"]}
    coverage = {}
    for signal, (label_cat, _) in SIGNALS.items():
        key = "copyable_k4" if signal == "induction" else "qa_template_tokens"
        top = sorted(contributions, key=lambda s, key=key: -contributions[s][key])
        coverage[signal] = {"labeled": categories[label_cat]["actual"],
                            "spec_estimate": (PLAN_ESTIMATES.get(directory.name, {}).get(signal)),
                            "measured": measured[key],
                            "contributors": {s: contributions[s][key] for s in top if contributions[s][key] > 0}}
    packing = {}
    for block in sorted((manifest.get("packing") or {}).get("block_sizes", {}), key=int):
        rep = grounding_report(directory, int(block))
        packing[block] = {"padding_share": rep["padding_share"], "num_samples": rep["num_samples"],
                          "retrieval": rep["categories"].get("retrieval")}
    contamination = None
    if eval_dirs:
        start = time.perf_counter()
        contamination = eval_contamination(directory, eval_dirs, num_docs, seed)
        contamination["seconds"] = time.perf_counter() - start
    return {"directory": str(directory), "name": directory.name, "num_tokens": manifest["num_tokens"],
            "fingerprint": manifest.get("fingerprint"), "categories": categories, "sources": rows,
            "measured": measured, "coverage": coverage, "sample_per_source": num_docs, "seed": seed,
            "contamination": contamination, "packing": packing}


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def format_report(rep: dict) -> str:
    lines = [f"## {rep['name']} ({rep['num_tokens']:,} tokens, fingerprint {rep['fingerprint']})", "",
             "| category | target | actual |", "| --- | ---: | ---: |"]
    lines += [f"| {c} | {_pct(v['target'])} | {_pct(v['actual'])} |" for c, v in rep["categories"].items()
              if v["target"] or v["actual"]]
    lines += ["", "| source | category | target | actual | copyable k=1 | k=2 | k=4 | copy distance k=4 | "
              "long-range k=4 | QA-template tokens |", "| --- | --- |" + " ---: |" * 8]
    for s, r in rep["sources"].items():
        a = r["audit"]
        cells = ["-"] * 6 if a is None else [
            _pct(a["copyable"]["1"]["share"]), _pct(a["copyable"]["2"]["share"]), _pct(a["copyable"]["4"]["share"]),
            "-" if a["copyable"]["4"]["mean_distance"] is None else f"{a['copyable']['4']['mean_distance']:,.0f}",
            _pct(a["copyable"]["4"]["long_range_share"]), _pct(a["structure"]["qa_token_share"])]
        lines.append(f"| {s} | {r['category']} | {_pct(r['target_share'])} | {_pct(r['actual_share'])} | "
                     + " | ".join(cells) + " |")
    lines += ["", "| signal | labeled % | planned estimate | measured | measured as | top contributors |",
              "| --- | ---: | ---: | ---: | --- | --- |"]
    for signal, c in rep["coverage"].items():
        est = "-" if c["spec_estimate"] is None else f"~{c['spec_estimate']:.0f}%"
        contrib = ", ".join(f"{s} {100 * v:.1f}" for s, v in list(c["contributors"].items())[:4])
        lines.append(f"| {signal} | {_pct(c['labeled'])} | {est} | {_pct(c['measured'])} | {SIGNALS[signal][1]} "
                     f"| {contrib} |")
    qa = [(s, i, u) for s, r in rep["sources"].items() for i, u in r.get("unanswerable", {}).items()]
    if qa:
        lines += ["", "unanswerable questions among QA documents: " + ", ".join(
            f"{s}/{i} {_pct(u['unanswerable_share'])} of {u['qa_documents']}" for s, i, u in qa)]
    c = rep.get("contamination")
    if c:
        lines += ["", f"| eval set | sampled docs | near duplicate in train | {c['ngram']}-gram windows in train | "
                      f"of them seen < {c['boilerplate']} times (beyond boilerplate) | of those, in passages of >= "
                      f"{c['min_run']} tokens |", "| --- |" + " ---: |" * 5]
        lines += [f"| {name} | {e['documents']:,} of {e['total_documents']:,} | "
                  f"{_pct(e['near_duplicate_documents'])} | {_pct(e['ngram_windows_in_train'])} | "
                  f"{_pct(e['ngram_windows_in_train_beyond_boilerplate'])} | "
                  f"{_pct(e['ngram_windows_in_train_passages'])} |" for name, e in c["eval_sets"].items()]
        lines += [f"(scanned {c['train_tokens_scanned']:,} training tokens, MinHash on "
                  f"{c['train_documents_checked']:,} documents sharing an eval {c['ngram']}-gram, in "
                  f"{c['seconds']:.1f} s)"]
    lines += ["", "| packing: block size | samples | padding | retrieval documents | whole in one sample: fixed "
              "windows | packed |", "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for block, p in rep["packing"].items():
        r = p["retrieval"] or {}
        lines.append(f"| {block} | {p['num_samples']:,} | {100 * p['padding_share']:.2f}% | "
                     f"{r.get('documents', 0):,} | {_pct(r.get('whole_fixed_windows'))} | "
                     f"{_pct(r.get('whole_packed'))} |")
    if not rep["packing"]:
        lines.append("| (no packing index: run the build's pack step or scripts/unified_build/pack_tokens.py) "
                     "| | | | | |")
    m = rep["measured"]
    lines += ["", f"copyable share of all tokens: k=1 {_pct(m['copyable_k1'])}, k=2 {_pct(m['copyable_k2'])}, "
                  f"k=3 {_pct(m['copyable_k3'])}, k=4 {_pct(m['copyable_k4'])}; long-range (>= 128 back) k=4 "
                  f"{_pct(m['long_range_copy_k4'])}"]
    return "\n".join(lines)


def plot(reports: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a pod or in CI
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    cats = [c for c in sorted(CATEGORIES) if any(r["categories"][c]["actual"] for r in reports)]
    width = 0.8 / (2 * len(reports))
    for i, r in enumerate(reports):
        for j, kind in enumerate(("target", "actual")):
            x = [c_i + (2 * i + j - len(reports) + 0.5) * width for c_i in range(len(cats))]
            ax1.bar(x, [100 * r["categories"][c][kind] for c in cats], width,
                    label=f"{r['name']} {kind}", hatch="" if kind == "target" else "//", alpha=0.85)
    ax1.set_xticks(range(len(cats)), cats)
    ax1.set_ylabel("% of tokens")
    ax1.set_title("category shares: target vs built")
    ax1.legend(fontsize=7)
    bars = [("code (labeled)", lambda r: r["coverage"]["induction"]["labeled"]),
            ("copyable k=4", lambda r: r["measured"]["copyable_k4"]),
            ("copyable k=2", lambda r: r["measured"]["copyable_k2"]),
            ("retrieval (labeled)", lambda r: r["coverage"]["retrieval"]["labeled"]),
            ("QA-template tokens", lambda r: r["measured"]["qa_template_tokens"]),
            ("long-range copy k=4", lambda r: r["measured"]["long_range_copy_k4"])]
    width = 0.8 / len(reports)
    for i, r in enumerate(reports):
        x = [b + (i - (len(reports) - 1) / 2) * width for b in range(len(bars))]
        ax2.bar(x, [100 * fn(r) for _, fn in bars], width, label=r["name"])
        for signal, xi in (("induction", 0), ("retrieval", 3)):
            est = r["coverage"][signal]["spec_estimate"]
            if est is not None:
                ax2.plot([x[xi] - width / 2, x[xi] + width / 2], [est, est], "k--", lw=1)
    ax2.set_xticks(range(len(bars)), [b for b, _ in bars], rotation=20, fontsize=8)
    ax2.set_ylabel("% of tokens")
    ax2.set_title("signal coverage: labeled vs measured (dashed: planned estimate)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110), suffix=".png")
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    reports = []
    for d in args.mix_dirs:
        evals = None if args.no_contamination else \
            [Path(e) for e in args.eval_dirs] if args.eval_dirs else default_eval_dirs(Path(d))
        try:
            reports.append(report_mix(Path(d), args.num_docs, args.seed, evals))
        except ValueError as e:
            raise SystemExit(str(e)) from None
    print("\n\n".join(format_report(r) for r in reports))
    out_dir = Path(args.out_dir) if args.out_dir else Path(os.path.commonpath([Path(d).resolve().parent
                                                                               for d in args.mix_dirs]))
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "mix_report.json", json.dumps(reports, indent=1) + "\n")
    written = [out_dir / "mix_report.json"]
    if not args.no_png:
        plot(reports, out_dir / "mix_report.png")
        written.append(out_dir / "mix_report.png")
    print("\nwrote " + ", ".join(map(str, written)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
