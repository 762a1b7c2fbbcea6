"""Dataset lineage: every token directory's manifest records where its tokens came from, recursively.

Schema (docs/DATASET_LINEAGE.md): a lineage node is a dict with `kind` (mix | eval_set | val_split | tokenized |
fetched), a `name`, counts, `files` [{path, sha256, ...}] and `inputs` [child nodes]. The mix node also records the
command, the build time, the definitions files and their sha256, and the tokenizer. It lives next to the data code
(elsewhere it is often `core/dataset_lineage.py`).

    python -m data.lineage data/demo/unified_6B          # print the tree
    python -m data.lineage data/demo/unified_6B --json   # the raw lineage JSON
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy
import tiktoken

from data.tokenizer import tokenizer_info


def environment() -> dict:
    import datasets  # lazily: it takes seconds to import and tokenizer worker processes import this module

    return {"python": platform.python_version(), "numpy": numpy.__version__, "tiktoken": tiktoken.__version__,
            "datasets": datasets.__version__, "host": platform.node()}


def build_node(kind: str, name: str, *, inputs: list[dict] | None = None, **fields) -> dict:
    """A lineage node; `inputs` are child nodes (recursion ends at fetched records)."""
    node = {"kind": kind, "name": name, **fields}
    if inputs is not None:
        node["inputs"] = inputs
    return node


def root_node(kind: str, name: str, *, command: list[str] | None = None, definitions: list[dict] | None = None,
              inputs: list[dict], **fields) -> dict:
    """The top node of a token directory: adds command, build time, tokenizer and environment."""
    return build_node(kind, name, command=command if command is not None else sys.argv,
                      built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), tokenizer=tokenizer_info(),
                      environment=environment(), definitions=definitions or [], inputs=inputs, **fields)


def _summary(node: dict) -> str:
    bits = [f"{node.get('kind', '?')}: {node.get('name', '?')}"]
    for key in ("dataset", "config", "revision", "split", "path", "formatter", "target_tokens", "tokens", "documents",
                "records_read", "repeats"):
        if node.get(key) not in (None, "", {}, []):
            bits.append(f"{key}={node[key]}")
    if node.get("skipped"):
        bits.append(f"skipped={node['skipped']}")
    if node.get("files"):
        bits.append(f"files={len(node['files'])}")
    return "  ".join(bits)


def format_tree(node: dict, indent: str = "") -> list[str]:
    lines = [indent + _summary(node)]
    for child in node.get("inputs", []):
        lines += format_tree(child, indent + "  <- ")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Print the lineage tree of a token directory's manifest.json.")
    ap.add_argument("directory", help="token directory (holds manifest.json), e.g. data/demo/unified_6B")
    ap.add_argument("--json", action="store_true", help="print the lineage as JSON instead of a tree")
    args = ap.parse_args(argv)
    mpath = Path(args.directory) / "manifest.json"
    if not mpath.is_file():
        raise SystemExit(f"{mpath} not found: pass a token directory built by "
                         f"scripts/unified_build/build_unified_dataset.py")
    manifest = json.loads(mpath.read_text())
    lineage = manifest.get("lineage") or {}
    if args.json:
        print(json.dumps(lineage, indent=1))
        return 0
    print(f"{args.directory}: {manifest['num_tokens']:,} tokens in {len(manifest['files'])} files, "
          f"fingerprint {manifest.get('fingerprint')}")
    if lineage.get("command"):
        print(f"built {lineage.get('built_at')} by: {' '.join(lineage['command'])}")
    for s, v in (manifest.get("sources") or {}).items():
        print(f"  {s:24s} target {v['target_tokens']:>14,}  actual {v['actual_tokens']:>14,}  repeats {v['repeats']}")
    print("\n".join(format_tree(lineage)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
