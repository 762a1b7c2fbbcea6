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
import re
from collections.abc import Callable

# One fixed retrieval layout (context, question, answer). Changing it changes what evaluation measures: don't.
RETRIEVAL_TEMPLATE = "Context:\n{context}\n\nQuestion: {question}\nAnswer:"
# The explicit answer to an unanswerable question (SQuAD v2): the spec's negative retrieval signal.
NOT_IN_CONTEXT = "The answer is not in the context."


class SkipRecord(Exception):
    """A record that is filtered out on purpose (reason is counted per source in the manifest)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def render_retrieval(context: str, question: str, answer: str | None = None) -> str:
    """The shared retrieval layout; without `answer` it is the evaluation prompt (ending in "Answer:")."""
    prompt = RETRIEVAL_TEMPLATE.format(context=context.strip(), question=question.strip())
    return prompt if answer is None else f"{prompt} {answer.strip()}"


def _field(record: dict, name: str):
    """A required field; a missing one skips the record (counted as `missing_field:<name>`), never crashes a build."""
    if not isinstance(record, dict) or name not in record or record[name] is None:
        raise SkipRecord(f"missing_field:{name}")
    return record[name]


def _stable_unit(*parts: str) -> float:
    """A number in [0, 1) from a hash of the record: varies per record, identical on every rebuild."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


# ---------------------------------------------------------------- plain text (FineWeb-Edu, Wikipedia, peS2o, ...)


def format_text(record: dict, text_field: str = "text", title_field: str | None = None, min_chars: int = 1) -> str:
    """Plain prose. With `title_field` (Wikipedia) the title is the first line."""
    text = _field(record, text_field)
    if not isinstance(text, str):
        raise SkipRecord(f"bad_type:{text_field}")
    text = text.strip()
    if len(text) < min_chars:
        raise SkipRecord("too_short")
    if title_field:
        title = str(_field(record, title_field)).strip()
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
    if not builtin_filters:
        text = format_text(record, text_field)
        if len(text) < min_chars:
            raise SkipRecord("too_short")
        return text
    if path_field:
        path = str(_field(record, path_field))
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
    text = _field(record, text_field)
    if not isinstance(text, str):
        raise SkipRecord(f"bad_type:{text_field}")
    if not text.strip() or len(text) < min_chars:
        raise SkipRecord("too_short")
    if len(text) > max_chars:  # minified bundles and data blobs: no copy signal, lots of tokens
        raise SkipRecord("too_long")
    if header and path_field and record.get(path_field):
        text = f"# {record[path_field]}\n{text}"
    return text.rstrip() + "\n"


# ---------------------------------------------------------------------------------------------- retrieval Q&A


def format_squad_v2(record: dict) -> str:
    """SQuAD v2 (`rajpurkar/squad_v2`: id, title, context, question, answers{text, answer_start}).
    Unanswerable questions (empty answers) get the explicit NOT_IN_CONTEXT answer."""
    context, question, answers = _field(record, "context"), _field(record, "question"), _field(record, "answers")
    texts = answers.get("text") if isinstance(answers, dict) else None
    if texts is None:
        raise SkipRecord("missing_field:answers.text")
    if not texts:
        return render_retrieval(context, question, NOT_IN_CONTEXT)
    answer = texts[0]
    if answer.lower() not in context.lower():
        raise SkipRecord("answer_not_in_context")
    return render_retrieval(context, question, answer)


def _find_answer(passage: str, candidates: list[str]) -> tuple[int, int] | None:
    low = passage.lower()
    for cand in candidates:
        cand = (cand or "").strip()
        if cand:
            pos = low.find(cand.lower())
            if pos >= 0:
                return pos, pos + len(cand)
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


def format_triviaqa_rc(record: dict, max_context_chars: int = 3000) -> str:
    """TriviaQA rc (`mandarjoshi/trivia_qa`, config rc: question, question_id, answer{value, aliases, ...},
    entity_pages{wiki_context}, search_results{search_context}).

    Grounding filter (spec): keep the example only if `answer.lower() in passage.lower()` for one of its
    passages (answer value first, then aliases); the first such passage, cut to `max_context_chars` with the
    answer at a per-question position, is the context. Ungrounded examples are skipped ("ungrounded")."""
    question, answer = _field(record, "question"), _field(record, "answer")
    if not isinstance(answer, dict) or "value" not in answer:
        raise SkipRecord("missing_field:answer.value")
    candidates = [answer["value"], *(answer.get("aliases") or [])]
    passages = [*((record.get("entity_pages") or {}).get("wiki_context") or []),
                *((record.get("search_results") or {}).get("search_context") or [])]
    if not passages:
        raise SkipRecord("no_passage")
    for passage in passages:
        span = _find_answer(passage, candidates)
        if span:
            unit = _stable_unit(str(record.get("question_id", question)))
            context = cut_window(passage, *span, max_context_chars, unit)
            return render_retrieval(context, question, passage[span[0] : span[1]])
    raise SkipRecord("ungrounded")


# ---------------------------------------------------------------------------------------- conversational threads


_HTML_TAG = re.compile(r"<[^>]+>")


def format_stackexchange(record: dict, max_answers: int = 3, min_score: int = 0) -> str:
    """A StackExchange thread (`HuggingFaceH4/stack-exchange-preferences`: qid, question, answers[{text, pm_score,
    selected}]): the question, then its answers (accepted first, then by score), so answers that echo the
    question's code and errors follow it in the context."""
    question, answers = _field(record, "question"), _field(record, "answers")
    if not isinstance(answers, list):
        raise SkipRecord("bad_type:answers")
    kept = [a for a in answers if isinstance(a, dict) and a.get("text") and (a.get("pm_score") or 0) >= min_score]
    if not kept:
        raise SkipRecord("no_answers")
    kept.sort(key=lambda a: (not a.get("selected"), -(a.get("pm_score") or 0)))
    parts = [f"Question:\n{_HTML_TAG.sub('', question).strip()}"]
    for a in kept[:max_answers]:
        label = "Accepted answer" if a.get("selected") else "Answer"
        parts.append(f"{label} (score {a.get('pm_score', 0)}):\n{_HTML_TAG.sub('', a['text']).strip()}")
    return "\n\n".join(parts)


def _quote(text: str, max_chars: int) -> str:
    text = text.strip()
    if len(text) > max_chars:
        text = text[:max_chars].rsplit(" ", 1)[0] + " ..."
    return "\n".join("> " + line if line else ">" for line in text.splitlines())


def format_reddit_thread(record: dict, comments_field: str = "comments", quote_chars: int = 400,
                         require_reply: bool = True) -> str:
    """A Reddit thread (Pushshift fields: title, selftext, comments[{id, parent_id, body}] with parent_id
    "t3_<post>" for top-level and "t1_<comment>" for replies). A reply to a comment is rendered after a `> `
    quote of the comment it answers: the explicit context echo the audit kept Reddit for. Threads with no
    reply to a comment (flat debate) are skipped as "no_quote_reply" when `require_reply`."""
    title = str(_field(record, "title")).strip()
    comments = _field(record, comments_field)
    if not isinstance(comments, list):
        raise SkipRecord(f"bad_type:{comments_field}")
    by_id = {c.get("id"): c for c in comments if isinstance(c, dict) and c.get("body")}
    children: dict[str, list[dict]] = {}
    for c in by_id.values():
        children.setdefault(str(c.get("parent_id", ""))[3:], []).append(c)
    parts = [title + ("\n\n" + record["selftext"].strip() if (record.get("selftext") or "").strip() else "")]
    replies = 0

    def walk(comment: dict, parent: dict | None):
        nonlocal replies
        body = comment["body"].strip()
        if body in ("[deleted]", "[removed]"):
            return
        if parent is not None:
            replies += 1
            parts.append(f"{_quote(parent['body'], quote_chars)}\n\n{body}")
        else:
            parts.append(body)
        for child in children.get(comment.get("id"), []):
            walk(child, comment)

    top = [c for c in by_id.values() if str(c.get("parent_id", "")).startswith("t3_") or
           str(c.get("parent_id", ""))[3:] not in by_id]
    for c in top:
        walk(c, None)
    if require_reply and replies == 0:
        raise SkipRecord("no_quote_reply")
    return "\n\n---\n\n".join(parts)


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
