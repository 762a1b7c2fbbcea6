"""Add a grounding-safe packing index to token directories, or print its figures (docs/DATASET.md, "Packing").

The build's pack step writes the index for the block sizes it was given; a training config with another
`model.block_size` needs that size indexed too. Run from the repository root:

    python scripts/unified_build/pack_tokens.py data/demo/unified_6B data/demo/unified_6B/val --block-size 256
    python scripts/unified_build/pack_tokens.py data/unified_6B --block-size 1024 --report   # also print the figures

The index is written in place next to the shards and recorded in each directory's manifest.json (`packing`); an
index already there for that block size, stream and boundaries is kept. How the packing works: data/packing.py.
"""

from __future__ import annotations

import argparse
import sys

from data.packing import BOUNDARIES_EOT, BOUNDARIES_EOT_FILES
from data.token_dataset import add_packing, grounding_report


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("dirs", nargs="+", metavar="DIR", help="token directories (each with manifest.json)")
    ap.add_argument("--block-size", type=int, nargs="+", required=True,
                    help="model.block_size(s) of the training configs that will read these directories")
    ap.add_argument("--document-boundaries", choices=["auto", BOUNDARIES_EOT, BOUNDARIES_EOT_FILES],
                    default="auto",
                    help="where documents start: after each EOT, or also at each shard file start (auto: the "
                         "latter for directories the build pipeline assembled, whose manifest has 'sources')")
    ap.add_argument("--report", action="store_true",
                    help="also print the grounding figures (whole retrieval documents, before vs after) per DIR")
    args = ap.parse_args(argv)
    if any(b < 1 for b in args.block_size):
        ap.error(f"--block-size must be >= 1, got {args.block_size}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    for d in args.dirs:
        try:
            boundaries = None if args.document_boundaries == "auto" else args.document_boundaries
            for b in args.block_size:
                entry = add_packing(d, b, boundaries=boundaries)
                print(f"{d}: block_size {b}: {entry['num_samples']:,} samples, padding "
                      f"{100 * entry['padding_share']:.2f}% ({entry['documents']:,} documents, "
                      f"{entry['long_documents']:,} long)")
                if args.report:
                    rep = grounding_report(d, b)
                    for cat, r in rep["categories"].items():
                        print(f"    {cat}: {r['documents']:,} documents, whole in one sample: fixed windows "
                              f"{100 * r['whole_fixed_windows']:.1f}% -> packed {100 * r['whole_packed']:.1f}%")
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
