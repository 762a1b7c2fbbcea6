"""Record formatters: one function per kind of source record, turning a record in its dataset's own schema into
one training document (a string), or raising `SkipRecord` with a reason that the build counts in the manifest.

The retrieval prompt template lives here and is shared with the evaluation code, so that the model is evaluated
on exactly the layout it was trained on:

    from data.formats import render_retrieval, NOT_IN_CONTEXT
    prompt = render_retrieval(context, question)            # ends with "Answer:"
    document = render_retrieval(context, question, answer)  # training layout: prompt + " " + answer

Formatters are pure functions of (record, options): no randomness other than a hash of the record, so a rebuild
produces identical documents.
"""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Callable

# One fixed retrieval layout (context, question, answer). Changing it changes what evaluation measures: don't.
RETRIEVAL_TEMPLATE = "Context:\n{context}\n\nQuestion: {question}\nAnswer:"
# The explicit answer to an unanswerable question (SQuAD v2): the negative retrieval signal.
NOT_IN_CONTEXT = "The answer is not in the context."


class SkipRecord(Exception):
    """A record that is filtered out on purpose (reason is counted per source in the manifest)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class SchemaError(ValueError):
    """A record that does not have the shape its formatter was written for (a key missing, a value of the wrong
    type or nesting): the definitions point at the wrong dataset, config or formatter, or the dataset changed.
    Never skipped: the build stops naming the source, the record and the field (see `data/build.py`)."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"field {field!r}: {problem}")
        self.field = field


# Fields that identify a record in an error message, in the order tried (SQuAD/peS2o/FineWeb `id`, TriviaQA
# `question_id`, REDDIT_threaded `thread_id`, StackExchange `qid`, The Stack `hexsha`, code files `path`,
# CodeParrot `repo_name`).
RECORD_ID_FIELDS = ("id", "question_id", "thread_id", "qid", "hexsha", "max_stars_repo_path", "path", "repo_name")


def record_id(record) -> str | None:
    """The record's own id, for error messages; None when it has none of RECORD_ID_FIELDS."""
    if isinstance(record, dict):
        for key in RECORD_ID_FIELDS:
            if record.get(key) not in (None, ""):
                return str(record[key])
    return None


def render_retrieval(context: str, question: str, answer: str | None = None) -> str:
    """The shared retrieval layout; without `answer` it is the evaluation prompt (ending in "Answer:")."""
    prompt = RETRIEVAL_TEMPLATE.format(context=context.strip(), question=question.strip())
    return prompt if answer is None else f"{prompt} {answer.strip()}"


_CONTEXT_MARK, _QUESTION_MARK, _ANSWER_MARK = "Context:\n", "\n\nQuestion: ", "\nAnswer:"


def parse_retrieval(text: str, question: str | None = None) -> tuple[str, str, str | None]:
    """(context, question, answer) of a document or prompt in `RETRIEVAL_TEMPLATE`: the inverse of
    `render_retrieval`, so `render_retrieval(*parse_retrieval(doc)) == doc` (answer None for a prompt ending in
    "Answer:"). The markers may also occur inside a context (a passage quoting a Q&A) or an answer: the split taken
    is the first that renders back to `text`, trying the record's `question` (when given) first, then the last
    question marker with the first answer marker after it. ValueError for a text that is not in the template."""
    if not text.startswith(_CONTEXT_MARK):
        raise ValueError(f"not a retrieval document (does not start with {_CONTEXT_MARK!r}): {text[:60]!r}")
    candidates = []  # (start of the question marker, start of the answer marker)
    if question is not None:
        at = text.rfind(f"{_QUESTION_MARK}{question.strip()}{_ANSWER_MARK}")
        if at >= 0:
            candidates.append((at, at + len(_QUESTION_MARK) + len(question.strip())))
    for q in reversed([m.start() for m in re.finditer(re.escape(_QUESTION_MARK), text)]):
        body = q + len(_QUESTION_MARK)
        candidates += [(q, body + m.start()) for m in re.finditer(re.escape(_ANSWER_MARK), text[body:])]
    for q, a in candidates:
        context, quest, rest = text[len(_CONTEXT_MARK) : q], text[q + len(_QUESTION_MARK) : a], \
            text[a + len(_ANSWER_MARK) :]
        if rest and not rest.startswith(" "):
            continue
        answer = rest[1:] if rest else None
        if render_retrieval(context, quest, answer) == text:
            return context, quest, answer
    raise ValueError(f"not a retrieval document (no context/question/answer split renders back to it): {text[:60]!r}")


_TYPE_NAMES = {str: "a string", dict: "an object", list: "a list", int: "an integer", bool: "a boolean"}


def _field(record: dict, name: str, kind: type | tuple[type, ...] | None = None):
    """A required field of the dataset's schema. An absent key or a value of the wrong type is a SchemaError (the
    schema is not what the formatter expects: stop); a null value is a record without content, skipped and
    counted as `missing_field:<name>`."""
    if not isinstance(record, dict):
        raise SchemaError("<record>", f"expected an object, got {type(record).__name__}")
    if name not in record:
        raise SchemaError(name, f"missing (record has {sorted(record)})")
    value = record[name]
    if value is None:
        raise SkipRecord(f"missing_field:{name}")
    if kind is not None and not isinstance(value, kind):
        want = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise SchemaError(name, f"expected {want}, got {type(value).__name__} {str(value)[:60]!r}")
    return value


def _stable_unit(*parts: str) -> float:
    """A number in [0, 1) from a hash of the record: varies per record, identical on every rebuild."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


# ---------------------------------------------------------------- plain text (FineWeb-Edu, Wikipedia, peS2o, ...)


def format_text(record: dict, text_field: str = "text", title_field: str | None = None, min_chars: int = 1) -> str:
    """Plain prose. With `title_field` (Wikipedia) the title is the first line."""
    text = _field(record, text_field, str).strip()
    if len(text) < min_chars:
        raise SkipRecord("too_short")
    if title_field:
        title = _field(record, title_field, str).strip()
        if title and text.split("\n", 1)[0].strip() != title:  # no duplicate heading line
            text = f"{title}\n\n{text}"
    return text


_FRONTMATTER = re.compile(r"\A---\s*\n.*?\n---\s*\n", re.S)


def format_readme(record: dict, text_field: str = "content", min_chars: int = 200, min_ascii_letters: float = 0.6,
                  path_field: str | None = None, builtin_filters: bool = True) -> str:
    """GitHub README with the audit's filters: Jekyll frontmatter stripped; changelogs and mostly non-Latin-script
    READMEs (the Chinese READMEs the audit found) dropped. With `builtin_filters=False` only the length check
    stays: the source's `filters` (front_matter, changelog, languages; data/quality.py) do the rest and the build
    counts the tokens they remove, which a formatter skip cannot."""
    if path_field and isinstance(record, dict) and path_field not in record:  # the changelog filter reads it
        raise SchemaError(path_field, f"missing (record has {sorted(record)})")
    if not builtin_filters:
        text = format_text(record, text_field)
        if len(text) < min_chars:
            raise SkipRecord("too_short")
        return text
    if path_field:
        path = str(record[path_field] or "")
        if re.search(r"(?i)(changelog|changes|history)[^/]*$", path):
            raise SkipRecord("changelog")
    text = _FRONTMATTER.sub("", format_text(record, text_field)).strip()
    if re.match(r"(?i)#*\s*(changelog|change log|release notes)\b", text):
        raise SkipRecord("changelog")
    letters = [c for c in text if c.isalpha()]
    if not letters or sum(c.isascii() for c in letters) / len(letters) < min_ascii_letters:
        raise SkipRecord("non_english")
    if len(text) < min_chars:
        raise SkipRecord("too_short")
    return text


# ---------------------------------------------------------------------------------------------------- code files


def format_code(record: dict, text_field: str = "content", path_field: str | None = None, max_chars: int = 1_000_000,
                min_chars: int = 1, header: bool = True) -> str:
    """A source file. With `path_field` a `# path` comment line first, the way a file is seen in a repository."""
    text = _field(record, text_field, str)
    if not text.strip() or len(text) < min_chars:
        raise SkipRecord("too_short")
    if len(text) > max_chars:  # minified bundles and data blobs: no copy signal, lots of tokens
        raise SkipRecord("too_long")
    if header and path_field:
        if path_field not in record:
            raise SchemaError(path_field, f"missing (record has {sorted(record)})")
        if record[path_field]:  # a null path: the file without its header line
            text = f"# {record[path_field]}\n{text}"
    return text.rstrip() + "\n"


# ---------------------------------------------------------------------------------------------- retrieval Q&A


# SQuAD v2's train split: 130,319 questions (card, dataset_info.splits), about a third of them unanswerable ("the
# train data has roughly twice as many answerable questions as unanswerable ones": Rajpurkar et al. 2018, "Know What
# You Don't Know", https://arxiv.org/abs/1806.03822, section 4). The mix aims at ~20%.
SQUAD_V2_TRAIN_UNANSWERABLE_SHARE = 1 / 3


def unanswerable_keep_share(target: float, split_share: float) -> float:
    """Share of unanswerable questions to keep so that they make up `target` of the kept questions, when they are
    `split_share` of the split: keep k of them, all answerable ones, k p / (k p + 1 - p) = t."""
    if not isinstance(target, (int, float)) or not isinstance(split_share, (int, float)) or \
            not 0 <= target < 1 or not 0 < split_share < 1:
        raise ValueError(f"squad_v2 formatter_options: unanswerable_share {target!r} must be in [0, 1) and "
                         f"split_unanswerable_share {split_share!r} in (0, 1); set them in the source definitions")
    return min(1.0, target * (1 - split_share) / (split_share * (1 - target)))


def format_squad_v2(record: dict, unanswerable_share: float | None = None,
                    split_unanswerable_share: float = SQUAD_V2_TRAIN_UNANSWERABLE_SHARE,
                    max_tokens: int | None = None) -> str:
    """SQuAD v2 (https://huggingface.co/datasets/rajpurkar/squad_v2, config squad_v2: id, title, context, question,
    answers {text: [str], answer_start: [int]}: a dict of lists, empty lists for an unanswerable question).
    Unanswerable questions get the explicit NOT_IN_CONTEXT answer.

    With `unanswerable_share` (~0.2) unanswerable questions are kept at the share that brings them to that
    share of the kept questions, given that they are `split_unanswerable_share` of the split (train: ~1/3); each
    question's draw comes from a hash of its `id`, so a rebuild keeps the same ones. Dropped ones are counted as
    "unanswerable_over_share"; the built share is in the audit ("QA unanswerable docs") and the mix report.

    `max_tokens`: the rendered document fits that many tokens with its EOT (`fit_retrieval`)."""
    context, question = _field(record, "context", str), _field(record, "question", str)
    answers = _field(record, "answers", dict)
    texts = answers.get("text", None)
    if not isinstance(texts, list):
        raise SchemaError("answers.text", f"expected a list (the card's answers is a dict of lists), got {texts!r}")
    if not texts:
        if unanswerable_share is not None:
            keep = unanswerable_keep_share(unanswerable_share, split_unanswerable_share)
            if _stable_unit("squad_v2_unanswerable", str(_field(record, "id"))) >= keep:
                raise SkipRecord("unanswerable_over_share")
        at = int(_stable_unit("squad_v2_window", str(record.get("id", question))) * len(context))
        return fit_retrieval(context, question, NOT_IN_CONTEXT, at, at, max_tokens, 0.5)
    answer = texts[0]
    start = context.lower().find(answer.lower())
    if start < 0:
        raise SkipRecord("answer_not_in_context")
    starts = answers.get("answer_start") or []
    if starts and isinstance(starts[0], int) and context[starts[0] : starts[0] + len(answer)] == answer:
        start = starts[0]  # the card's span (the same words may occur earlier in the passage)
    return fit_retrieval(context, question, answer, start, start + len(answer), max_tokens,
                         _stable_unit(str(record.get("id", question))))


def _exact_case(candidate: str) -> bool:
    """Whether `candidate` must match in its own case: a short one (3 characters or fewer) or an abbreviation (every
    letter a capital, two or more letters). TriviaQA's aliases hold US, IN, OR, ME, ...: matched case-insensitively,
    "IN" grounds an answer on the word "in" of "People in the state"."""
    letters = [c for c in candidate if c.isalpha()]
    return len(candidate) <= 3 or (len(letters) >= 2 and all(c.isupper() for c in letters))


def _find_answer(passages: list[str], candidates: list[str]) -> tuple[int, int, int] | None:
    """(passage index, start, end) of the first candidate found as a whole word in any passage: the answer value
    first, then the aliases longest first (a long alias is specific, a short one is the likeliest to hit a common
    word), each searched across all passages before the next is tried, so a short alias ("Aar") cannot ground an
    example on a fragment ("Aarhus") while the value itself is in another passage. A match is the grounding filter's
    `answer.lower() in passage.lower()` that also starts and ends at a word boundary (a non-word character or the
    text's end on either side; `\b` would fail on "U.S."), and for short candidates and abbreviations
    (`_exact_case`) in their own case only."""
    value, *aliases = [(c or "").strip() for c in candidates]
    ordered = [value, *sorted(aliases, key=len, reverse=True)]  # sorted() is stable: equal lengths keep card order
    for cand in ordered:
        if not cand:
            continue
        flags = 0 if _exact_case(cand) else re.IGNORECASE
        pattern = re.compile(rf"(?<!\w){re.escape(cand)}(?!\w)", flags)
        for i, passage in enumerate(passages):
            m = pattern.search(passage)
            if m:
                return i, m.start(), m.end()
    return None


def cut_window(passage: str, start: int, end: int, max_chars: int, unit: float) -> str:
    """Cut `passage` to at most `max_chars` around the answer span [start, end), with the answer at relative
    position `unit` in [0, 1) of the window (0: window starts at the answer, ~1: window ends with it), so the
    model sees answers at every position of its context, not always centred. Cuts snap to whitespace."""
    if len(passage) <= max_chars:
        return passage
    slack = max(0, max_chars - (end - start))
    lo = max(0, min(start - int(unit * slack), len(passage) - max_chars))
    hi = lo + max_chars
    if lo > 0:  # snap inward to word boundaries, never past the answer
        sp = passage.find(" ", lo, start)
        lo = sp + 1 if sp >= 0 else lo
    if hi < len(passage):
        sp = passage.rfind(" ", end, hi)
        hi = sp if sp >= 0 else hi
    return passage[lo:hi].strip()


RETRIEVAL_FORMATTERS = ("squad_v2", "triviaqa_rc")
"""Formatters that render `RETRIEVAL_TEMPLATE` documents, sized in tokens by `max_tokens` (the build sets it to the
largest block size it packs for + 1 unless the definitions do: a document that fits one sample is packed whole)."""


def _num_tokens(text: str) -> int:
    from data.tokenizer import get_tokenizer  # here: the schema checks and tests import this module without tiktoken

    return len(get_tokenizer().encode_ordinary(text))


def fit_retrieval(context: str, question: str, answer: str, start: int, end: int, max_tokens: int | None,
                  unit: float) -> str:
    """`render_retrieval(context, question, answer)`, with the context cut (`cut_window`, the span [start, end) inside
    it at relative position `unit`) to the longest window whose document fits `max_tokens` tokens including its EOT,
    found by bisection on the window's characters (documents that fit are tokenized once). Raises SkipRecord
    ("too_long_for_block") when even the span alone does not fit (a question longer than the block)."""
    text = render_retrieval(context, question, answer)
    if max_tokens is None or _num_tokens(text) + 1 <= max_tokens:
        return text
    best, lo, hi = None, end - start, len(context) - 1  # window lengths in characters: lo fits or nothing does
    while lo <= hi:
        mid = (lo + hi) // 2
        candidate = render_retrieval(cut_window(context, start, end, mid, unit), question, answer)
        if _num_tokens(candidate) + 1 <= max_tokens:
            best, lo = candidate, mid + 1
        else:
            hi = mid - 1
    if best is None:
        raise SkipRecord("too_long_for_block")
    return best


def _column(record: dict, name: str, column: str) -> list:
    """`record[name][column]` of a datasets `Sequence` of structs, which the card declares and the library delivers
    as a dict of lists (`entity_pages: {wiki_context: [...], title: [...], ...}`), not a list of dicts."""
    value = _field(record, name, dict)
    if column not in value:
        raise SchemaError(f"{name}.{column}", f"missing (has {sorted(value)})")
    if not isinstance(value[column], list):
        raise SchemaError(f"{name}.{column}", f"expected a list, got {type(value[column]).__name__}")
    return value[column]


def format_triviaqa_rc(record: dict, max_context_chars: int = 3000, max_tokens: int | None = None) -> str:
    """TriviaQA rc (https://huggingface.co/datasets/mandarjoshi/trivia_qa, config rc: question, question_id,
    question_source, entity_pages {doc_source, filename, title, wiki_context} and search_results {description,
    filename, rank, title, url, search_context} as dicts of lists, answer {aliases, normalized_aliases,
    matched_wiki_entity_name, normalized_matched_wiki_entity_name, normalized_value, type, value}).

    Grounding filter: keep the example only if `answer.lower() in passage.lower()` for one of its passages,
    matched as a whole word, short candidates and abbreviations in their own case: the answer value across all
    passages first, then each alias, longest first, across all passages (`_find_answer`); the passage it is found
    in, cut to `max_context_chars` with the answer at a per-question position, is the context. Ungrounded examples
    are skipped ("ungrounded"). `max_tokens`: the rendered document fits that many tokens with its EOT, the window
    shrunk further where 3,000 characters of tables, numbers or non-Latin text are more tokens (`fit_retrieval`)."""
    question, answer = _field(record, "question", str), _field(record, "answer", dict)
    if "value" not in answer or not isinstance(answer.get("aliases", []), list):
        raise SchemaError("answer", f"expected {{value, aliases: [...]}}, got keys {sorted(answer)}")
    candidates = [answer["value"], *(answer.get("aliases") or [])]
    passages = [*_column(record, "entity_pages", "wiki_context"), *_column(record, "search_results", "search_context")]
    passages = [p for p in passages if isinstance(p, str) and p.strip()]
    if not passages:
        raise SkipRecord("no_passage")
    found = _find_answer(passages, candidates)
    if found is None:
        raise SkipRecord("ungrounded")
    i, start, end = found
    unit = _stable_unit(str(record.get("question_id", question)))
    context = cut_window(passages[i], start, end, max_context_chars, unit)
    lo = context.find(passages[i][start:end]) if context != passages[i] else start
    return fit_retrieval(context, question, passages[i][start:end], lo, lo + end - start, max_tokens, unit)


def _gold_answers(record: dict, formatter: str) -> list[str]:
    """Every gold answer string of a retrieval record, in the card's order: SQuAD v2 `answers.text`, TriviaQA rc
    `answer.value` then `answer.aliases` (its normalized_aliases are lower-cased copies: left out)."""
    if formatter == "squad_v2":
        texts = record["answers"]["text"]
    elif formatter == "triviaqa_rc":
        texts = [record["answer"]["value"], *(record["answer"].get("aliases") or [])]
    else:
        raise ValueError(f"formatter {formatter!r} is not a retrieval formatter {RETRIEVAL_FORMATTERS}")
    return [t for t in texts if isinstance(t, str)]


def qa_fields(formatter: str, record: dict, text: str) -> dict | None:
    """The held-out QA item a retrieval document stands for, for evaluation by generation (data/qa_items.py):
    {"context" (as in the document: the possibly cut window), "question", "answers" (the answer the document shows
    first, then every other gold answer, stripped, deduplicated in order; [] when unanswerable), "answerable",
    "id" (the record's, or None)}. Context and question are parsed back out of `text` (the document as kept, after
    any quality-filter change); None when `text` is not in the template (nothing to evaluate)."""
    try:
        context, question, shown = parse_retrieval(text, record.get("question") if isinstance(record, dict) else None)
    except ValueError:
        return None
    if shown is None:
        return None
    answerable = shown != NOT_IN_CONTEXT and (formatter != "squad_v2" or bool(record["answers"]["text"]))
    answers = list(dict.fromkeys(a for a in (shown, *(g.strip() for g in _gold_answers(record, formatter))) if a)) \
        if answerable else []
    return {"context": context, "question": question, "answers": answers, "answerable": answerable,
            "id": record_id(record)}


def qa_from_text(text: str) -> dict | None:
    """`qa_fields` for a document fetched before part lines carried them: context, question and the shown answer
    from the text alone (answers [that answer], answerable unless it is NOT_IN_CONTEXT); None when not a
    retrieval document."""
    try:
        context, question, shown = parse_retrieval(text)
    except ValueError:
        return None
    if shown is None:
        return None
    answerable = shown != NOT_IN_CONTEXT
    return {"context": context, "question": question, "answers": [shown] if answerable else [],
            "answerable": answerable, "id": None}


# ---------------------------------------------------------------------------------------- conversational threads


_HTML_TAG = re.compile(r"<[^>]+>")
# A StackExchange code block is `<pre><code>...</code></pre>` (attributes allowed, e.g. `<pre class="lang-py
# prettyprint-override">`); its text is HTML-escaped (`&lt;`, `&amp;`), its line breaks and indentation are real.
_PRE_CODE = re.compile(r"<pre\b[^>]*>\s*<code\b[^>]*>(.*?)</code>\s*</pre>", re.S | re.I)
_CODE_SLOT = re.compile("\x00(\\d+)\x00")


def html_to_text(body: str) -> str:
    """StackExchange HTML as plain text: `<pre><code>` blocks become ``` fenced blocks with their text exact (tags
    dropped, entities unescaped, indentation kept), other tags are dropped, and HTML entities are unescaped
    (`html.unescape`: `&lt;` -> `<`, `&amp;` -> `&`, `&#39;` -> `'`) after the tags are gone, so an escaped
    `&lt;div&gt;` in the text stays text instead of being taken for a tag."""
    blocks: list[str] = []

    def slot(m: re.Match) -> str:
        blocks.append(html.unescape(_HTML_TAG.sub("", m.group(1))).strip("\n"))
        return f"\x00{len(blocks) - 1}\x00"

    text = html.unescape(_HTML_TAG.sub("", _PRE_CODE.sub(slot, body.replace("\x00", ""))))
    text = _CODE_SLOT.sub(lambda m: f"\n```\n{blocks[int(m.group(1))]}\n```\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def format_stackexchange(record: dict, max_answers: int = 3, min_score: int = 0) -> str:
    """A StackExchange thread (https://huggingface.co/datasets/HuggingFaceH4/stack-exchange-preferences: qid,
    question (HTML), answers [{answer_id, author, author_id, author_profile, pm_score, selected, text}], date,
    metadata): the question, then its answers (accepted first, then by score), so answers that echo the
    question's code and errors follow it in the context. HTML becomes text with code blocks fenced
    (`html_to_text`)."""
    question, answers = _field(record, "question", str), _field(record, "answers", list)
    for i, a in enumerate(answers):
        missing = {"text", "pm_score", "selected"} - set(a) if isinstance(a, dict) else {"<object>"}
        if missing:
            raise SchemaError(f"answers[{i}]", f"missing {sorted(missing)}")
    kept = [a for a in answers if a["text"] and (a["pm_score"] or 0) >= min_score]
    if not kept:
        raise SkipRecord("no_answers")
    kept.sort(key=lambda a: (not a["selected"], -(a["pm_score"] or 0)))
    parts = [f"Question:\n{html_to_text(question)}"]
    for a in kept[:max_answers]:
        label = "Accepted answer" if a["selected"] else "Answer"
        parts.append(f"{label} (score {a['pm_score']}):\n{html_to_text(a['text'])}")
    return "\n\n".join(parts)


def format_reddit_thread(record: dict, text_field: str = "text", min_messages: int = 2, min_chars: int = 1) -> str:
    """A Reddit thread of HuggingFaceGECLM/REDDIT_threaded (https://huggingface.co/datasets/HuggingFaceGECLM/
    REDDIT_threaded: start_date, end_date, thread_id, subreddit, subreddit_id, total_score, text, num_messages,
    avg_score; one split per subreddit, no `train`). The card gives a whole thread as one `text` string and
    does not document how its messages are joined, so the text is kept as it is: no re-threading. The
    quote-reply signal Reddit is kept for is the users' own markdown quotes (`> ...` lines followed by a
    reply), which the source's `quote_reply_keep_share` filter finds line by line (data/quality.py).

    Reddit dumps store bodies HTML-escaped (`&gt;` for a quote marker); unescaping is a no-op on text that is not
    escaped and turns escaped quotes into the `>` lines the filter counts. Threads with fewer than
    `min_messages` messages (`num_messages`) have nothing to reply to and are skipped ("single_message")."""
    text = html.unescape(_field(record, text_field, str)).strip()
    num = _field(record, "num_messages", int)
    if num < min_messages:
        raise SkipRecord("single_message")
    if len(text) < min_chars:
        raise SkipRecord("too_short")
    return text


# ------------------------------------------------------------------------------------------ hold-back groups

# The field of each formatter's schema that groups its documents for the hold-back (DESIGN "Hold-back before
# tokenization"; docs/DATASET.md): every document of a group goes to the same split. SQuAD v2: `title`, the Wikipedia
# article (its ~5 questions per context and all contexts of the article go together); TriviaQA rc: `question_id`;
# StackExchange: `qid`. Code: the file's own text (`text_field`, i.e. without the `# path` header), so one file
# under two paths lands in one split; a definitions input can name its repository field instead (`holdback_group`:
# CodeParrot `repo_name`, StarCoderData `max_stars_repo_name`). Field names are the cards' (the schemas in
# tests/fixtures/sources/README.md and docs/DATASET.md; StarCoderData's own card is gated, its columns
# max_stars_repo_path, max_stars_repo_name, max_stars_count, id, content are listed by derived cards with the same
# features, e.g. https://huggingface.co/datasets/jon-tow/starcoderdata-python-edu and
# https://huggingface.co/datasets/zhensuuu/starcoderdata_100star_py). A formatter not listed here groups by the
# document text alone.
GROUP_FIELDS = {"squad_v2": "title", "triviaqa_rc": "question_id", "stackexchange": "qid"}
# The fields that name a GitHub repository ("owner/name") in the code datasets' schemas: CodeParrot's `repo_name`,
# The Stack / StarCoder's `max_stars_repo_name` (and its issues/forks siblings). A repository is one hold-back group
# whatever field, schema or source holds its files (DESIGN, "Hold-back before tokenization"): its key is
# `repo=<owner/name>` in lower case (GitHub names are case-insensitive), and its split is hashed without the source.
REPOSITORY_FIELDS = ("repo_name", "max_stars_repo_name", "max_issues_repo_name", "max_forks_repo_name")
REPOSITORY_KEY = "repo="


def repository_key(group: str | None) -> str | None:
    """`repo=<owner/name>` for a group read from a repository field (also one written by a fetch before this key
    existed, "repo_name=Owner/Name"), else the group unchanged."""
    if group:
        field, sep, value = group.partition("=")
        if sep and field in REPOSITORY_FIELDS:
            return REPOSITORY_KEY + value.strip().lower()
    return group
TEXT_GROUP = "text"  # `holdback_group: "text"`: each document is its own group (the content hash)


def group_field(formatter: str, options: dict, holdback_group: str | None = None) -> str:
    """The record field whose value is a document's hold-back group, or TEXT_GROUP."""
    if holdback_group:
        return holdback_group
    if formatter == "code":
        return options.get("text_field", "content")
    return GROUP_FIELDS.get(formatter, TEXT_GROUP)


def holdback_group(record: dict, field: str) -> str | None:
    """A document's hold-back group key from `record[field]` ("title=Beyonce"; a long value such as a file's text
    as a sha256: "content#9f2c..."), or None for TEXT_GROUP or a null value (the document text decides). An
    absent field is a SchemaError: the definitions name a field this dataset does not have."""
    if field == TEXT_GROUP:
        return None
    if not isinstance(record, dict) or field not in record:
        raise SchemaError(field, f"missing (read as the hold-back group; record has "
                                 f"{sorted(record) if isinstance(record, dict) else type(record).__name__})")
    value = record[field]
    if value is None or value == "":
        return None
    value = str(value)
    if field in REPOSITORY_FIELDS:
        return repository_key(f"{field}={value}")
    if len(value) > 200:
        return f"{field}#{hashlib.sha256(value.encode()).hexdigest()[:32]}"
    return f"{field}={value}"


# A formatter whose output changed for the same record gets a version here: the fetch stamp
# (data/stamps.py `stage_configs`) carries it, so an existing work directory refetches that input alone (the
# others' stamps are unchanged: the key is left out at version 1). triviaqa_rc 2: exact-case short aliases and
# abbreviations, aliases longest first.
FORMATTER_VERSIONS: dict[str, int] = {"triviaqa_rc": 2}

FORMATTERS: dict[str, Callable[..., str]] = {
    "text": format_text,
    "readme": format_readme,
    "code": format_code,
    "squad_v2": format_squad_v2,
    "triviaqa_rc": format_triviaqa_rc,
    "stackexchange": format_stackexchange,
    "reddit_thread": format_reddit_thread,
}


def get_formatter(name: str) -> Callable[..., str]:
    if name not in FORMATTERS:
        raise ValueError(f"unknown formatter {name!r}; known: {sorted(FORMATTERS)}")
    return FORMATTERS[name]
