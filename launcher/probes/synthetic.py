"""Synthetic tasks on which a tiny model forms the circuits the probes look for, in seconds on a CPU: records the
probe builder lays out and training rows with their supervised positions, each a pure function of its seed.

Used by the probe controls (`tests/test_probe_controls.py`, `tests/test_probe_trained_controls.py`), the trained
retrieval control (`launcher.probes.trained_control`) and the experiments under `scripts/experiments/`.

- Copy sequences (`copy_rows`): random tokens from a small id range with one segment repeated later in the row, at
  a random segment length AND a random offset, so only match-and-copy ("what followed this token last time")
  predicts the repeat. A fixed offset would teach a positional copy head instead. `shuffle=True` repeats the
  segment's tokens in a random order: the negative control that knows *which* tokens come back but not their order.
- Grounded QA records (`qa_records`) in the SQuAD v2 schema the real probe builder takes
  (`launcher.probes.build_retrieval_items`): one-sentence facts "Anna owes 47." about single-token names; an
  answerable question asks a stated fact ("Anna owes?" -> "47"), an unanswerable one a fact the article does not
  state (-> `NOT_IN_CONTEXT`). Names and two-digit numbers are single GPT-2 tokens, so the whole task uses ~150
  token ids, each seen often in training; the builder places the gold passage among other articles' facts, which
  never name the subject, so the answer is found only by matching the name AND the relation.
- Unigram rows (`unigram_rows`): tokens drawn from a fixed skewed distribution, learnable without any copying:
  the "general" share of the curriculum experiment's mix.
- Probe-item rows (`qa_example_rows`): builder items as training rows, prompt, answer and EOT.
- Question-session rows (`qa_session_rows`): the same facts and template generated directly (not through the probe
  builder), several questions about one context per row, each answer supervised: more answer signal per row for
  the retrieval scouts (`scripts/experiments/retrieval_scout.py`).
- The marked-fact task (`code_rows`, `code_records`): one question for every row, "What is the code?", answered
  from the one sentence "The code is 47." among other names' facts and decoys ("The gate is 12."), or "not in
  the context" when only decoys are there. The question carries nothing to match, so a 2-layer model learns it in
  ~1,500 steps (one composition: the number two tokens after " code"), where the name-and-relation lookup of the
  tasks above stays on a plateau for 14,000 (docs/PROBES.md, "Scouting"). It is the trained retrieval control of
  tests/test_probe_trained_controls.py.
- `task_token_ids`: every token id these tasks produce, the output set of `tiny_training.restricted_output`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from data.formats import NOT_IN_CONTEXT, render_retrieval
from data.tokenizer import EOT

# Single GPT-2 tokens with and without a leading space (a name starts the context or follows a space), none a
# substring of another (the probe builder bans filler sentences containing the subject's name as a substring).
NAMES = ("Anna", "Bob", "Carl", "Dan", "Eric", "Fred", "Jack", "Mark", "Paul", "Sam", "Adam", "Ben", "Eva", "Greg",
         "Kate", "Max", "Rick", "Ted", "Tom", "Alice", "Chris", "David", "Frank", "George", "Henry", "James", "John",
         "Kevin", "Laura", "Mary", "Mike", "Nick", "Peter", "Sarah", "Steve", "Tony", "Bill", "Jim", "Joe", "Ryan",
         "Scott", "Lisa", "Amy", "Andy", "Alex", "Jeff", "Josh", "Kim")
RELATIONS = ("has", "owes", "wants", "sells")  # single GPT-2 tokens after a space
VALUES = range(10, 100)  # " 10" .. " 99" are single GPT-2 tokens
COPY_VOCAB = 256  # copy-sequence token ids are [0, COPY_VOCAB): ~ln 256 = 5.5 nats of surprise per unseen token


def qa_records(num_articles: int, seed: int, unanswerable_share: float = 0.25, names: Sequence[str] = NAMES,
               relations: Sequence[str] = RELATIONS, values: Sequence[int] = VALUES) -> Iterator[dict]:
    """SQuAD v2-schema records (`id`, `title`, `context`, `question`, `answers`), one question per article. An
    article states 2 or 3 of the 4 relations of one name (with fewer `relations`: 1 to all but one), in a random
    order, each with its own value. Smaller `names` / `relations` / `values` give the smaller task the trained
    control uses (tests/test_probe_controls.py); the defaults draw exactly as before."""
    if len(relations) < 2 or len(values) < len(relations) or not set(names) <= set(NAMES):
        raise ValueError(f"qa_records: need >= 2 relations, >= as many values, names from NAMES; got {len(relations)} "
                         f"relations, {len(values)} values, names {sorted(set(names) - set(NAMES))} not in NAMES")
    rng = np.random.Generator(np.random.PCG64(seed))
    most = min(3, len(relations) - 1)  # leave one relation unstated so an unanswerable question exists
    for a in range(num_articles):
        name = names[int(rng.integers(len(names)))]
        order = rng.permutation(len(relations))
        least = min(2, most)
        stated = [relations[int(i)] for i in order[: least + int(rng.integers(most - least + 1))]]
        values_ = rng.choice(np.asarray(values), size=len(stated), replace=False)
        sentences = [f"{name} {rel} {int(v)}." for rel, v in zip(stated, values_, strict=True)]
        context = " ".join(sentences)
        record = {"id": f"synthetic-{seed}-{a}", "title": name, "context": context}
        missing = [r for r in relations if r not in stated]
        if rng.random() < unanswerable_share:
            record["question"] = f"{name} {missing[int(rng.integers(len(missing)))]}?"
            record["answers"] = {"text": [], "answer_start": []}
        else:
            k = int(rng.integers(len(stated)))
            answer = str(int(values_[k]))
            sentence_at = context.index(sentences[k])
            record["question"] = f"{name} {stated[k]}?"
            record["answers"] = {"text": [answer], "answer_start": [sentence_at + sentences[k].rindex(answer)]}
        yield record



def copy_rows(rng: np.random.Generator, count: int, length: int, vocab: int = COPY_VOCAB, min_len: int = 3,
              shuffle: bool = False) -> tuple[list[list[int]], list[list[int]]]:
    """`count` rows of `length` random tokens in [0, vocab) in which a segment of random length L (min_len ..
    length // 2) starting at a random p reappears at p + d for a random offset d >= L. Returns the rows and, per
    row, the positions whose next token is the repeat's 2nd..L-th token (the 1st is unpredictable)."""
    rows, sup = [], []
    for _ in range(count):
        row = rng.integers(0, vocab, size=length)
        seg = int(rng.integers(min_len, length // 2 + 1))
        d = int(rng.integers(seg, length - seg + 1))
        p = int(rng.integers(0, length - seg - d + 1))
        piece = row[p : p + seg].copy()
        if shuffle:
            piece = rng.permutation(piece)
        row[p + d : p + d + seg] = piece
        rows.append(row.tolist())
        sup.append(list(range(p + d, p + d + seg - 1)))
    return rows, sup


def unigram_rows(rng: np.random.Generator, count: int, length: int, positions: int, vocab: int = COPY_VOCAB
                 ) -> tuple[list[list[int]], list[list[int]]]:
    """Rows drawn i.i.d. from a fixed Zipf-like distribution over [0, vocab) (learnable without context); `positions`
    random supervised positions per row."""
    p = 1.0 / np.arange(1, vocab + 1)
    p /= p.sum()
    rows = [rng.choice(vocab, size=length, p=p).tolist() for _ in range(count)]
    sup = [sorted(rng.choice(length - 1, size=positions, replace=False).tolist()) for _ in range(count)]
    return rows, sup


def qa_example_rows(items) -> tuple[list[list[int]], list[list[int]]]:
    """Training rows from probe-builder items (`launcher.probes.RetrievalItem`): prompt, answer, EOT; supervised on
    the answer tokens and the EOT (the probe's greedy decoding stops there)."""
    rows, sup = [], []
    for it in items:
        rows.append([*it.prompt, *it.answer_tokens, EOT])
        sup.append(list(range(len(it.prompt) - 1, len(it.prompt) + len(it.answer_tokens))))
    return rows, sup


def qa_session_rows(rng: np.random.Generator, tokenizer, count: int, facts: tuple[int, int] = (2, 11),
                    questions: int = 4, unanswerable_share: float = 0.25, names: Sequence[str] = NAMES,
                    relations: Sequence[str] = RELATIONS, max_len: int = 128,
                    ) -> tuple[list[list[int]], list[list[int]]]:
    """`count` rows, each one context of `facts[0]..facts[1]` facts ("Anna owes 47.") about distinct names (1 to
    len(relations) relations each, grouped by name, the sentences shuffled in 30% of rows) followed by up to
    `questions` questions about it, every (name, relation) asked at most once:

        Context:\n<facts>\n\nQuestion: Anna owes?\nAnswer: 47\n\nQuestion: Bob has?\nAnswer: The answer is ...<EOT>

    The first question is the probe's prompt exactly (`render_retrieval`); the later ones repeat its question
    block. An unanswerable question (`unanswerable_share`) names a person of the context and a relation not stated
    for them, as in the probe. Supervised: each answer's first token, one more of the phrase's tokens at random, and
    the token after each answer ("\n\n" or EOT: the probe's greedy decoding stops at a newline or EOT). Rows stop
    before `max_len` tokens. Returns (rows, supervised positions per row)."""
    lo, hi = facts
    if not 1 <= lo <= hi or not relations:
        raise ValueError(f"qa_session_rows: need 1 <= facts[0] <= facts[1] and >= 1 relation; got facts {facts}, "
                         f"{len(relations)} relations")
    rows, supervised = [], []
    while len(rows) < count:
        n = int(rng.integers(lo, hi + 1))
        stated: dict[tuple[str, str], int] = {}
        people: list[str] = []
        while len(stated) < n:
            name = names[int(rng.integers(len(names)))]
            if name in people:
                continue
            people.append(name)
            group = min(n - len(stated), int(rng.integers(1, len(relations) + 1)))
            for r in rng.permutation(len(relations))[:group]:
                stated[(name, relations[int(r)])] = int(rng.integers(VALUES.start, VALUES.stop))
        order = list(stated)
        if rng.random() < 0.3:
            order = [order[int(i)] for i in rng.permutation(len(order))]
        context = " ".join(f"{a} {r} {stated[(a, r)]}." for a, r in order)
        missing = [(a, r) for a in people for r in relations if (a, r) not in stated]
        ids: list[int] = []
        sup: list[int] = []
        asked: set[tuple[str, str]] = set()
        for _ in range(questions):
            pool = missing if missing and rng.random() < unanswerable_share else order
            pool = [q for q in pool if q not in asked]
            if not pool:
                continue
            a, r = pool[int(rng.integers(len(pool)))]
            answer = str(stated[(a, r)]) if (a, r) in stated else NOT_IN_CONTEXT
            text = render_retrieval(context, f"{a} {r}?") if not ids else f"\n\nQuestion: {a} {r}?\nAnswer:"
            prompt = tokenizer.encode_ordinary(text)
            answer_ids = tokenizer.encode_ordinary(" " + answer)
            if len(ids) + len(prompt) + len(answer_ids) + 1 > max_len:
                break
            if ids:
                sup.append(len(ids) - 1)  # the previous answer's terminator: this block's "\n\n"
            asked.add((a, r))
            ids += prompt
            first = len(ids) - 1  # predicts the answer's first token
            ids += answer_ids
            sup.append(first)
            if len(answer_ids) > 1:
                sup.append(first + 1 + int(rng.integers(len(answer_ids) - 1)))
        if not ids:
            continue  # every question was skipped (e.g. nothing unanswerable left): draw another context
        sup.append(len(ids) - 1)
        rows.append([*ids, EOT])
        supervised.append(sorted(sup))
    return rows, supervised


KEY = "code"  # the marked fact's key; the decoys use the others (single GPT-2 tokens after a space)
DECOY_KEYS = ("gate", "room", "seat")
CODE_QUESTION = f"What is the {KEY}?"


def _key_sentence(key: str, value: int) -> str:
    return f"The {key} is {value}."


def code_records(num_articles: int, seed: int, unanswerable_share: float = 0.25) -> Iterator[dict]:
    """SQuAD v2-schema records of the marked-fact task: context "The code is 47." (answerable) or "The gate is 12."
    (a decoy: the question is unanswerable), question `CODE_QUESTION`. Every title is `KEY`, so the probe builder
    (`build_retrieval_items`, which never takes a filler sentence containing the subject's title) places them among
    the filler articles it is given (`qa_records`: other names' facts) and never another code sentence."""
    rng = np.random.Generator(np.random.PCG64(seed))
    for a in range(num_articles):
        value = int(rng.integers(VALUES.start, VALUES.stop))
        record = {"id": f"code-{seed}-{a}", "title": KEY, "question": CODE_QUESTION}
        if rng.random() < unanswerable_share:
            record["context"] = _key_sentence(DECOY_KEYS[int(rng.integers(len(DECOY_KEYS)))], value)
            record["answers"] = {"text": [], "answer_start": []}
        else:
            record["context"] = _key_sentence(KEY, value)
            record["answers"] = {"text": [str(value)], "answer_start": [record["context"].rindex(str(value))]}
        yield record


def code_rows(rng: np.random.Generator, tokenizer, count: int, max_len: int = 64, unanswerable_share: float = 0.25,
              answer_before: int | None = None) -> tuple[list[list[int]], list[list[int]]]:
    """`count` training rows of the marked-fact task in the probe's prompt layout, each at most `max_len` tokens:
    2-9 other names' facts, 0-2 decoy sentences and (unless unanswerable) the code sentence, in a random order, so
    the answer can sit anywhere in the window; then `CODE_QUESTION`, the answer and EOT. Supervised: the answer's
    first token, one more of the phrase's tokens at random, and the EOT (the probe stops there). With
    `answer_before`, answerable rows whose answer token sits at that position or later are drawn again (the
    position-invariance experiment trains on answers in the first half of the window only)."""
    key_is = tokenizer.encode_ordinary(f" {KEY} is")
    shortest = len(tokenizer.encode_ordinary(render_retrieval(_key_sentence(KEY, 10), CODE_QUESTION)))
    longest_answer = len(tokenizer.encode_ordinary(" " + NOT_IN_CONTEXT)) + 1
    if max_len < shortest + longest_answer:
        raise ValueError(f"code_rows: max_len {max_len} cannot hold even one sentence, the question and the answer "
                         f"({shortest + longest_answer} tokens); use max_len >= {shortest + longest_answer}")
    rows, supervised = [], []
    while len(rows) < count:
        sentences = [f"{NAMES[int(rng.integers(len(NAMES)))]} {RELATIONS[int(rng.integers(len(RELATIONS)))]} "
                     f"{int(rng.integers(VALUES.start, VALUES.stop))}." for _ in range(int(rng.integers(2, 10)))]
        for _ in range(int(rng.integers(0, 3))):
            sentences.append(_key_sentence(DECOY_KEYS[int(rng.integers(len(DECOY_KEYS)))],
                                           int(rng.integers(VALUES.start, VALUES.stop))))
        answer = None
        if rng.random() >= unanswerable_share:
            answer = str(int(rng.integers(VALUES.start, VALUES.stop)))
            sentences.append(_key_sentence(KEY, int(answer)))
        order = [sentences[int(i)] for i in rng.permutation(len(sentences))]
        answer_ids = tokenizer.encode_ordinary(" " + (answer or NOT_IN_CONTEXT))
        while True:  # drop other facts (never the code sentence) until the row fits
            prompt = tokenizer.encode_ordinary(render_retrieval(" ".join(order), CODE_QUESTION))
            if len(prompt) + len(answer_ids) + 1 <= max_len:
                break
            drop = next(i for i in range(len(order) - 1, -1, -1) if not order[i].startswith(f"The {KEY} "))
            del order[drop]
        if answer is not None and answer_before is not None:
            at = next(i for i in range(len(prompt)) if prompt[i : i + len(key_is)] == key_is) + len(key_is)
            if at >= answer_before:
                continue
        first = len(prompt) - 1
        sup = [first, *([first + 1 + int(rng.integers(len(answer_ids) - 1))] if len(answer_ids) > 1 else []),
               first + len(answer_ids)]
        rows.append([*prompt, *answer_ids, EOT])
        supervised.append(sup)
    return rows, supervised


def task_token_ids(tokenizer, names: Sequence[str] = NAMES, relations: Sequence[str] = RELATIONS) -> list[int]:
    """Every token id the QA tasks above produce (names with and without a leading space, relations, numbers, the
    template, the marked-fact sentences and question, the "not in the context" phrase, terminators): the output set
    of `restricted_output`."""
    pieces = ["Context:\n", "\n\nQuestion:", "?\nAnswer:", ".", " " + NOT_IN_CONTEXT, " " + CODE_QUESTION,
              *(f"{lead}{_key_sentence(k, 10)}" for k in (KEY, *DECOY_KEYS) for lead in ("", " ")),
              *names, *(" " + n for n in names), *(" " + r for r in relations), *(f" {v}" for v in VALUES)]
    ids = {EOT}
    for piece in pieces:
        ids.update(tokenizer.encode_ordinary(piece))
    return sorted(ids)
