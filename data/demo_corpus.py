"""Offline corpora for `data/sources/demo.json`: no network, deterministic, seconds to build.

- `squad_v2_records`: a generated grounded-QA corpus in SQuAD v2's schema (id, title, context, question,
  answers{text, answer_start}), about a quarter unanswerable, from a seeded generator: same seed, same records.
- `docstrings`: real English prose available on every machine that has this project installed: the triple-quoted
  strings (docstrings) of Python modules, e.g. the standard library's and numpy's.
"""

from __future__ import annotations

import inspect
import random
import re
import sysconfig
from collections.abc import Iterator
from pathlib import Path


def expand_path(path: str) -> str:
    """`{stdlib}` / `{purelib}` placeholders: this interpreter's standard library and site-packages."""
    paths = sysconfig.get_paths()
    return path.replace("{stdlib}", paths["stdlib"]).replace("{purelib}", paths["purelib"])


_TRIPLE = re.compile(r"(?s)(\"\"\"|''')(.*?)\1")


def docstrings(roots: list[str], include: list[str] | None = None, exclude: list[str] | None = None,
               min_chars: int = 80, min_prose_ratio: float = 0.8) -> Iterator[dict]:
    """One record {"text", "path"} per module file: its prose-like triple-quoted strings joined by blank lines.

    `include` / `exclude` match the first path component under a root (package or module name without `.py`).
    A regex instead of `ast` keeps this ~20x faster; strings that are mostly code or symbols are dropped by
    `min_prose_ratio` (share of letters and spaces)."""
    for root in roots:
        base = Path(expand_path(root))
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base)
            top = rel.parts[0].removesuffix(".py")
            if "site-packages" in rel.parts or (include and top not in include) or (exclude and top in exclude):
                continue
            pieces = []
            for m in _TRIPLE.finditer(path.read_text(encoding="utf-8", errors="replace")):
                doc = inspect.cleandoc(m.group(2))
                if len(doc) >= min_chars and sum(c.isalpha() or c.isspace() for c in doc) >= min_prose_ratio * len(doc):
                    pieces.append(doc)
            if pieces:
                yield {"text": "\n\n".join(pieces), "path": f"{base.name}/{rel.as_posix()}"}


# ---------------------------------------------------------------------------------- generated grounded QA

_SYL = ["ka", "lo", "mi", "ra", "ven", "tor", "sel", "dun", "bar", "qui", "nel", "os", "tha", "gri", "mor", "pel"]
_KINDS = ["town", "river port", "mountain village", "trading city", "coastal settlement", "border fortress"]
_GOODS = ["salt", "copper", "wool", "glass", "timber", "silk", "amber", "spices", "paper", "iron tools"]
_RIVERS = ["Ostra", "Velna", "Marik", "Dor", "Saluen", "Tevra", "Kinn", "Albor"]
_TRADES = ["weavers", "smiths", "printers", "brewers", "boatbuilders", "glassblowers", "masons", "clockmakers"]


def _name(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(_SYL) for _ in range(parts)).capitalize()


def _place(rng: random.Random) -> dict:
    return {
        "name": _name(rng, rng.randint(2, 3)), "kind": rng.choice(_KINDS), "river": rng.choice(_RIVERS),
        "founded": rng.randint(900, 1890), "founder": f"{_name(rng, 2)} {_name(rng, 3)}",
        "export": rng.choice(_GOODS), "population": rng.randint(800, 250_000), "trade": rng.choice(_TRADES),
        "mayor": f"{_name(rng, 2)} {_name(rng, 2)}", "festival": f"{_name(rng, 2)} Festival",
    }


# fact key -> (statement, question, answer) templates filled from a place; tests read it to check the probes
FACTS = {
    "founded": ("{name} was founded in {founded}.", "In which year was {name} founded?", "{founded}"),
    "founder": ("Its founder, {founder}, chose the site for its shelter from the wind.", "Who founded {name}?",
                "{founder}"),
    "river": ("The {kind} lies on the banks of the river {river}.", "On which river does {name} lie?", "{river}"),
    "export": ("For centuries its main export has been {export}.", "What is the main export of {name}?", "{export}"),
    "population": ("A census counted {population} inhabitants.", "How many inhabitants did the census count in "
                   "{name}?", "{population}"),
    "trade": ("The guild of {trade} is the oldest institution of the town.", "Which guild is the oldest institution "
              "of {name}?", "{trade}"),
    "mayor": ("The current mayor is {mayor}.", "Who is the current mayor of {name}?", "{mayor}"),
    "festival": ("Every autumn the {festival} fills the market square.", "Which festival fills the market square of "
                 "{name} every autumn?", "{festival}"),
}


def squad_v2_records(num_articles: int = 1000, seed: int = 1234, questions_per_article: int = 4,
                     unanswerable_share: float = 0.25) -> Iterator[dict]:
    """SQuAD v2-schema records about invented places. Each article states a random subset of eight facts in a
    shuffled order, so the answer's position in the context varies; an unanswerable question asks about a fact the
    article does not state (answers {"text": [], "answer_start": []})."""
    rng = random.Random(seed)
    for a in range(num_articles):
        place = _place(rng)
        keys = list(FACTS)
        rng.shuffle(keys)
        stated, missing = keys[: rng.randint(4, 7)], keys[7:] or keys[-1:]
        sentences = [f"{place['name']} is a {place['kind']}."] + [FACTS[k][0].format(**place) for k in stated]
        context = " ".join(sentences)
        for q in range(questions_per_article):
            record = {"id": f"demo-{seed}-{a}-{q}", "title": place["name"], "context": context}
            if rng.random() < unanswerable_share:
                key = rng.choice([k for k in keys if k not in stated] or missing)
                record["question"] = FACTS[key][1].format(**place)
                record["answers"] = {"text": [], "answer_start": []}
            else:
                key = rng.choice(stated)
                answer = FACTS[key][2].format(**place)
                start = context.index(FACTS[key][0].format(**place)) + FACTS[key][0].format(**place).index(answer)
                record["question"] = FACTS[key][1].format(**place)
                record["answers"] = {"text": [answer], "answer_start": [start]}
            yield record
