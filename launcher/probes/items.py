"""Probe items: the fixed inputs the probes evaluate, a pure function of (tokenizer, block_size, seed, sizes).

- Induction sequences: a random token block repeated twice (`induction_sequences`).
- Retrieval prompts: held-out grounded QA prompts in the training template (`data.formats.render_retrieval`), the
  passage holding the answer placed so that the answer's first token falls in each of `NUM_BUCKETS` position
  buckets of the context window, between filler passages; unanswerable prompts hold a passage about the subject
  that does not state the asked fact (`build_retrieval_items`).
- `ProbeSet` bundles both with the bucket edges and decoding limits; `build_probes` makes one and
  `probes_for_block_size` is the trainer's per-eval set (None when the context is too short).

Held-out guarantee: probe items come from the demo QA generator (`data.demo_corpus.squad_v2_records`) with
`PROBE_SEED`, never the seed the demo mix trains on (`training_qa_seed`, read from `data/sources/demo.json`). The
generated places reuse a small name space, so a test regenerates the whole training stream and checks that no probe
article (its context) is a training article.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data import demo_corpus
from data.demo_corpus import squad_v2_records
from data.formats import NOT_IN_CONTEXT, render_retrieval
from data.tokenizer import EOT, get_tokenizer
from launcher.grounded_qa import line_stop_ids

PROBE_SEED = 97_531  # the generator seed of probe items; training data uses `training_qa_seed()`
NUM_BUCKETS = 8
MIN_BLOCK_SIZE = 64  # the trainer runs the probes at block sizes from here up
DEMO_SOURCES = Path(demo_corpus.__file__).with_name("sources") / "demo.json"
QA_GENERATOR = "data.demo_corpus:squad_v2_records"  # how a source definition names the demo QA generator


@functools.cache
def training_qa_seed(sources: Path = DEMO_SOURCES) -> int:
    """The seed of the QA articles the demo mix trains on: the `seed` of the source input in `sources` that loads
    `QA_GENERATOR` (the generator's own default when the input names none). Read from the source definitions, the
    one place that seed is set, so the held-out check follows any change there."""
    default = inspect.signature(squad_v2_records).parameters["seed"].default
    definitions = json.loads(Path(sources).read_text())
    seeds = {inp["loader"].get("kwargs", {}).get("seed", default)
             for source in definitions.get("sources", {}).values() for inp in source.get("inputs", [])
             if inp.get("loader", {}).get("callable") == QA_GENERATOR}
    if len(seeds) != 1:
        raise ValueError(f"{sources}: expected one seed for the {QA_GENERATOR} inputs, found {sorted(seeds)}")
    return seeds.pop()


@dataclass(frozen=True)
class RetrievalItem:
    """One retrieval prompt. `answer_pos` is the prompt index of the answer's first token (-1: unanswerable)."""

    record_id: str
    bucket: int
    answerable: bool
    prompt: tuple[int, ...]
    answer: str  # gold text; NOT_IN_CONTEXT for unanswerable items
    answer_tokens: tuple[int, ...]  # " " + answer, as the training document continues after "Answer:"
    answer_pos: int
    prompt_without: tuple[int, ...] | None  # the same prompt with the gold passage left out (answerable only)
    gold_passage: str


@dataclass
class ProbeSet:
    """Everything the probes evaluate; a pure function of (tokenizer, block_size, seed, sizes)."""

    block_size: int
    induction: np.ndarray  # (n_seq, 2 * half) int64: a random block repeated twice
    half: int
    retrieval: list[RetrievalItem]
    bucket_edges: list[int]  # NUM_BUCKETS + 1 token positions; bucket b = [edges[b], edges[b+1])
    max_new_tokens: int
    stop_ids: frozenset[int] = field(repr=False)  # EOT and every token whose text holds a newline
    tokenizer: object = field(repr=False, compare=False)

    def describe(self) -> str:
        n_ans = sum(i.answerable for i in self.retrieval)
        return (f"{len(self.induction)} induction sequences of 2 x {self.half} tokens; {n_ans} answerable + "
                f"{len(self.retrieval) - n_ans} unanswerable retrieval prompts in {NUM_BUCKETS} buckets "
                f"(edges {self.bucket_edges})")


def induction_sequences(block_size: int, count: int, seed: int, vocab: int = EOT) -> tuple[np.ndarray, int]:
    """`count` sequences of a random block of `half` tokens (ids in [0, vocab), EOT excluded) repeated twice; the
    model sees the first 2*half - 1 tokens (its input must fit block_size)."""
    half = (block_size + 1) // 2
    rng = np.random.Generator(np.random.PCG64(seed))
    block = rng.integers(0, vocab, size=(count, half), dtype=np.int64)
    return np.concatenate([block, block], axis=1), half


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _sentences(context: str) -> list[tuple[int, str]]:
    """(char offset, sentence) pairs of a context."""
    out, pos = [], 0
    for piece in _SENTENCE_END.split(context):
        start = context.index(piece, pos)
        out.append((start, piece))
        pos = start + len(piece)
    return out


def _articles(records: Iterable[dict]) -> list[dict]:
    """Group SQuAD-schema records by context: [{title, context, sentences, records}] in first-seen order."""
    by_context: dict[str, dict] = {}
    for r in records:
        a = by_context.setdefault(r["context"], {"title": r["title"], "context": r["context"],
                                                 "sentences": _sentences(r["context"]), "records": []})
        a["records"].append(r)
    return list(by_context.values())


def _gold_passage(article: dict, record: dict, rng: np.random.Generator) -> tuple[str, int] | None:
    """A short passage naming the article's subject: its first sentence plus the sentence holding the answer
    (answerable) or a random other sentence (unanswerable). Returns (passage, answer char offset or -1)."""
    sents = article["sentences"]
    first_start, first = sents[0]
    texts = record["answers"]["text"]
    if texts:
        start = record["answers"]["answer_start"][0]
        for s_start, s in sents:
            if s_start <= start < s_start + len(s):
                if s_start == first_start:
                    return first, start
                return f"{first} {s}", len(first) + 1 + (start - s_start)
        return None
    if len(sents) < 2:
        return first, -1
    _, other = sents[1 + int(rng.integers(len(sents) - 1))]
    return f"{first} {other}", -1


class _Builder:
    def __init__(self, tokenizer, block_size: int, filler_articles: list[dict], rng: np.random.Generator):
        self.enc = tokenizer
        self.block_size = block_size
        self.fillers = filler_articles
        # Lower-cased once: the filters below test every sentence of every filler article for every placement try.
        self.lowered = [[(s, s.lower()) for _, s in art["sentences"]] for art in filler_articles]
        self.rng = rng
        self._token_chars: np.ndarray | None = None  # token id -> characters it adds to the decoded text
        self._token_cont: np.ndarray | None = None  # token id -> 1 if it starts inside a UTF-8 character
        self.head_chars = len(render_retrieval("\x00", "q").split("\x00")[0])  # "Context:\n"

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def filler_stream(self, title: str, banned: str | None) -> Iterator[str]:
        """Filler sentences, article after article in a random order: never about `title`, never containing the
        gold answer `banned`, so the gold passage is the only place the answer (or the subject) appears.

        The order is drawn now (the builder's random stream does not depend on how much is read); the sentences
        are produced as they are read, since a placement usually needs only the first few."""
        order = self.rng.permutation(len(self.fillers))[:64]
        title_l, banned_l = title.lower(), banned.lower() if banned else None

        def sentences() -> Iterator[str]:
            for i in order:
                if self.fillers[int(i)]["title"] == title:
                    continue
                for s, low in self.lowered[int(i)]:
                    if not (banned_l and banned_l in low) and title_l not in low:
                        yield s

        return sentences()

    def layout(self, before: list[str], passage: str, after: list[str], question: str) -> tuple[str, int]:
        context = " ".join([*before, passage, *after])
        prompt = render_retrieval(context, question)
        passage_at = self.head_chars + (len(" ".join(before)) + 1 if before else 0)
        assert prompt[passage_at : passage_at + len(passage)] == passage
        return prompt, passage_at

    def token_index(self, ids: list[int], char: int) -> int:
        """Index of the token holding character `char` of the decoded text.

        The offsets are tiktoken's `decode_with_offsets` (a token starting inside a UTF-8 character starts one
        character early), computed from per-token character counts taken once for the whole vocabulary: decoding
        every candidate prompt byte by byte made the probe set take seconds to build at each run's start."""
        if self._token_chars is None:
            raw = [self.enc.decode_single_token_bytes(t) for t in range(self.enc.n_vocab)]
            self._token_chars = np.array([sum(1 for c in b if not 0x80 <= c < 0xC0) for b in raw], dtype=np.int64)
            self._token_cont = np.array([0x80 <= b[0] < 0xC0 for b in raw], dtype=np.int64)
        ids_arr = np.asarray(ids, dtype=np.int64)
        text_len = np.cumsum(self._token_chars[ids_arr]) - self._token_chars[ids_arr]  # characters before each token
        offsets = np.maximum(0, text_len - self._token_cont[ids_arr])
        return int(np.searchsorted(offsets, char, side="right")) - 1

    def place(self, record: dict, passage: str, answer_char: int, lo: int, hi: int, budget: int,
              tries: int = 6) -> tuple[list[int], int, list[str], list[str]] | None:
        """Fillers before the passage so the anchor (the answer, or the passage start when unanswerable) lands in
        token positions [lo, hi); fillers after it until the prompt uses `budget` tokens."""
        question = record["question"]
        answer = record["answers"]["text"][0] if record["answers"]["text"] else None
        anchor = answer_char if answer_char >= 0 else 0
        for attempt in range(tries):
            stream = self.filler_stream(record["title"], answer)
            before: list[str] = []
            ok = None
            for sentence in itertools.chain([None], stream):
                if sentence is not None:
                    before.append(sentence)
                prompt, at = self.layout(before, passage, [], question)
                ids = self.encode(prompt)
                pos = self.token_index(ids, at + anchor)
                if pos >= hi or len(ids) > budget:
                    if not before:
                        # Without fillers the anchor is already past the bucket (or the prompt over budget):
                        # fillers only push it further, so every try fails. Draw the skipped tries' orders anyway,
                        # so that the items after this one are the same as if they had run.
                        for _ in range(tries - attempt - 1):
                            self.filler_stream(record["title"], answer)
                        return None
                    break
                if pos >= lo:
                    ok = (before.copy(), pos)
                    break
            if ok is None:
                continue
            before, _ = ok
            after: list[str] = []
            for sentence in stream:  # the rest of this try's stream, after the sentences placed before
                prompt, _ = self.layout(before, passage, [*after, sentence], question)
                if len(self.encode(prompt)) > budget:
                    break
                after.append(sentence)
            prompt, at = self.layout(before, passage, after, question)
            ids = self.encode(prompt)
            if len(ids) > budget:
                continue
            return ids, self.token_index(ids, at + anchor), before, after
        return None


def build_retrieval_items(tokenizer, block_size: int, records: Iterable[dict], buckets: Sequence[int],
                          per_bucket: int, unanswerable_per_bucket: int, seed: int,
                          filler_records: Iterable[dict] | None = None,
                          ) -> tuple[list[RetrievalItem], list[int], int]:
    """Retrieval items with the answer in each of `buckets` (indices into the NUM_BUCKETS equal ranges of the
    answer-reachable positions). Returns (items, bucket edges, max_new_tokens). Also used by the ablation to
    build training examples whose answers sit only in some buckets."""
    rng = np.random.Generator(np.random.PCG64(seed))
    articles = _articles(records)
    fillers = _articles(filler_records) if filler_records is not None else articles
    builder = _Builder(tokenizer, block_size, fillers, rng)
    not_in_context = tuple(tokenizer.encode_ordinary(" " + NOT_IN_CONTEXT))
    # The longest answer we generate, plus its terminator; prompts leave room for it inside block_size.
    answers = [r["answers"]["text"][0] for a in articles for r in a["records"] if r["answers"]["text"]]
    max_answer = max([len(tokenizer.encode_ordinary(" " + t)) for t in answers] + [len(not_in_context)])
    max_new_tokens = max_answer + 1
    # Bucket range: from the earliest position any answer can take (the context start plus the shortest answer
    # offset inside a gold passage) to the latest one the shortest question leaves room for. At small block sizes
    # the end buckets are therefore filled by the items that fit there (short prefixes, short questions).
    tails = [len(tokenizer.encode_ordinary(render_retrieval("x", r["question"]))) - 1 for a in articles
             for r in a["records"]]
    reach = block_size - max_new_tokens - min(tails) + 1
    head = len(tokenizer.encode_ordinary(render_retrieval("\x00", "q").split("\x00")[0]))  # "Context:\n"
    offsets = []
    for a in articles:
        for r in a["records"]:
            gold = _gold_passage(a, r, rng) if r["answers"]["text"] else None
            if gold is not None:
                offsets.append(len(tokenizer.encode_ordinary(gold[0][: gold[1]].rstrip())))
    lo = head + min(offsets)
    if reach - lo < 2 * NUM_BUCKETS:
        raise ValueError(f"block_size {block_size} leaves {max(0, reach - lo)} token positions for the answer; the "
                         f"retrieval probe needs at least {2 * NUM_BUCKETS} (use block_size >= {MIN_BLOCK_SIZE})")
    edges = [lo + round(b * (reach - lo) / NUM_BUCKETS) for b in range(NUM_BUCKETS + 1)]
    budget = block_size - max_new_tokens

    pool = [(a, r) for a in articles for r in a["records"]]
    order = rng.permutation(len(pool))
    items: list[RetrievalItem] = []
    used: set[str] = set()

    def fill(b: int, need: dict[bool, int]) -> None:
        for idx in order:
            if not any(need.values()):
                return
            article, record = pool[int(idx)]
            answerable = bool(record["answers"]["text"])
            if need[answerable] == 0 or record["id"] in used:
                continue
            gold = _gold_passage(article, record, rng)
            if gold is None:
                continue
            passage, answer_char = gold
            placed = builder.place(record, passage, answer_char, edges[b], edges[b + 1], budget)
            if placed is None:
                continue
            ids, pos, before, after = placed
            if answerable:
                answer = record["answers"]["text"][0]
                answer_tokens = tuple(tokenizer.encode_ordinary(" " + answer))
                without_text = render_retrieval(" ".join([*before, *after]), record["question"])
                without = tuple(tokenizer.encode_ordinary(without_text))
            else:
                answer, answer_tokens, pos, without = NOT_IN_CONTEXT, not_in_context, -1, None
            items.append(RetrievalItem(record["id"], b, answerable, tuple(ids), answer, answer_tokens, pos,
                                       without, passage))
            used.add(record["id"])
            need[answerable] -= 1

    # Unanswerable prompts are placed by the start of their passage; at small block sizes a late bucket may have
    # no room for passage + question, and those prompts go to the earliest bucket that has (only their total is
    # reported, not per bucket).
    deficit = 0
    for b in buckets:
        need = {True: per_bucket, False: unanswerable_per_bucket}
        fill(b, need)
        if need[True]:
            raise ValueError(f"could not place {need[True]} answerable items in bucket {b} (positions "
                             f"[{edges[b]}, {edges[b + 1]})) at block_size {block_size}; use more probe articles "
                             "or a larger block_size")
        deficit += need[False]
    for b in buckets:
        if deficit:
            need = {True: 0, False: deficit}
            fill(b, need)
            deficit = need[False]
    if deficit:
        raise ValueError(f"could not place {deficit} unanswerable items at block_size {block_size}")
    items.sort(key=lambda it: (it.bucket, not it.answerable))
    return items, edges, max_new_tokens


def build_probes(tokenizer, block_size: int, seed: int = PROBE_SEED, induction_count: int = 8,
                 per_bucket: int = 4, unanswerable_per_bucket: int = 1, num_articles: int = 400,
                 induction_vocab: int = EOT, records: Iterable[dict] | None = None,
                 filler_records: Iterable[dict] | None = None) -> ProbeSet:
    """The fixed probe set for a model of context `block_size` (pure, deterministic: same arguments, same set).

    Defaults are the cheap per-eval set (8 induction sequences, 8 buckets x 4 answerable + 8 unanswerable prompts);
    `scripts/eval/rag_probe.py` uses more. The probe controls and the CPU-scale experiment
    (`scripts/experiments/probe_claims.py`) pass a small `induction_vocab` (ids [0, induction_vocab)) and their own
    held-out SQuAD-schema `records` (default: the demo QA generator with `seed`, `num_articles` articles), and the
    trained retrieval control its own `filler_records` (default: the records' other articles)."""
    if seed == training_qa_seed():
        raise ValueError(f"probe seed {seed} is the training QA generator's seed ({DEMO_SOURCES.name}); probe items "
                         "must be held out")
    if not 2 <= induction_vocab <= EOT:
        raise ValueError(f"induction_vocab must be in [2, {EOT}] (token ids [0, induction_vocab)), got "
                         f"{induction_vocab}")
    induction, half = induction_sequences(block_size, induction_count, seed, vocab=induction_vocab)
    records = list(records if records is not None else squad_v2_records(num_articles=num_articles, seed=seed))
    items, edges, max_new = build_retrieval_items(tokenizer, block_size, records, range(NUM_BUCKETS), per_bucket,
                                                  unanswerable_per_bucket, seed, filler_records=filler_records)
    return ProbeSet(block_size, induction, half, items, edges, max_new, frozenset(line_stop_ids(tokenizer)), tokenizer)


def probes_for_block_size(block_size: int, seed: int = PROBE_SEED) -> ProbeSet | None:
    """The per-eval probe set of the trainer, or None (with the reason printed once) when the context is too short
    to hold eight answer buckets of filler passages (below MIN_BLOCK_SIZE, e.g. the 64-token test config)."""
    if block_size < MIN_BLOCK_SIZE:
        from launcher.distributed import print0

        print0(f"probes: off (block_size {block_size} < {MIN_BLOCK_SIZE} leaves no room for 8 answer positions)")
        return None
    return build_probes(get_tokenizer(), block_size, seed=seed)
