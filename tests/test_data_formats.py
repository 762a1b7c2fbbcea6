"""Formatters on hand-written records (one test group per source kind). The records of every hub source in the
exact schema of its dataset card, run through loader -> formatter -> filters -> tokenizer, are in
tests/test_source_schemas.py with tests/fixtures/sources/."""

import pytest

from data.formats import (
    NOT_IN_CONTEXT,
    RETRIEVAL_TEMPLATE,
    SchemaError,
    SkipRecord,
    cut_window,
    format_code,
    format_readme,
    format_reddit_thread,
    format_squad_v2,
    format_stackexchange,
    format_text,
    format_triviaqa_rc,
    get_formatter,
    render_retrieval,
    unanswerable_keep_share,
)


def test_retrieval_template_fixed():
    assert RETRIEVAL_TEMPLATE == "Context:\n{context}\n\nQuestion: {question}\nAnswer:"
    assert render_retrieval(" c ", "q?") == "Context:\nc\n\nQuestion: q?\nAnswer:"
    assert render_retrieval("c", "q?", "a") == "Context:\nc\n\nQuestion: q?\nAnswer: a"


SQUAD = {"id": "56be85543aeaaa14008c9063", "title": "Beyonce",
         "context": "Beyonce Giselle Knowles-Carter (born September 4, 1981) is an American singer.",
         "question": "When was Beyonce born?", "answers": {"text": ["September 4, 1981"], "answer_start": [39]}}


def test_squad_v2_answerable_and_unanswerable():
    doc = format_squad_v2(SQUAD)
    assert doc == render_retrieval(SQUAD["context"], SQUAD["question"], "September 4, 1981")
    unans = {**SQUAD, "question": "Where did Beyonce study law?", "answers": {"text": [], "answer_start": []}}
    assert format_squad_v2(unans).endswith("Answer: " + NOT_IN_CONTEXT)
    with pytest.raises(SchemaError, match="field 'context': missing"):  # a schema mismatch stops, never skips
        format_squad_v2({k: v for k, v in SQUAD.items() if k != "context"})
    with pytest.raises(SkipRecord, match="missing_field:context"):  # a null value is a record without content
        format_squad_v2({**SQUAD, "context": None})
    with pytest.raises(SchemaError, match="field 'answers.text'"):  # a list of dicts is not the card's dict of lists
        format_squad_v2({**SQUAD, "answers": {"answer": [{"text": "September 4, 1981"}]}})
    with pytest.raises(SkipRecord, match="answer_not_in_context"):
        format_squad_v2({**SQUAD, "answers": {"text": ["1999"], "answer_start": [0]}})


def test_squad_v2_unanswerable_share_is_controlled():
    # a third unanswerable, as in SQuAD v2's train split; the data plan wants ~20%
    recs = [{**SQUAD, "id": f"q{i}", "answers": {"text": [], "answer_start": []}} if i % 3 == 0 else
            {**SQUAD, "id": f"q{i}"} for i in range(3000)]

    def share(**options):
        kept = []
        for r in recs:
            try:
                kept.append(format_squad_v2(r, **options).endswith(NOT_IN_CONTEXT))
            except SkipRecord as e:
                assert e.reason == "unanswerable_over_share"
        return sum(kept) / len(kept), len(kept)

    assert share() == (1000 / 3000, 3000)  # no target: everything kept
    assert unanswerable_keep_share(0.2, 1 / 3) == pytest.approx(0.5)
    got, kept = share(unanswerable_share=0.2, split_unanswerable_share=1 / 3)
    assert abs(got - 0.2) < 0.02 and 2000 < kept < 2600  # ~500 of 1000 unanswerable kept (binomial sd ~16)
    assert share(unanswerable_share=0.2, split_unanswerable_share=1 / 3) == (got, kept)  # a hash, not a coin
    with pytest.raises(ValueError, match="unanswerable_share 1.5 must be in"):
        share(unanswerable_share=1.5)


def _trivia(passage, value="Paris", aliases=("City of Light",), qid="tc_1", search=()):
    return {"question": "What is the capital of France?", "question_id": qid, "question_source": "http://x",
            "entity_pages": {"doc_source": ["TagMe"], "filename": ["France.txt"], "title": ["France"],
                             "wiki_context": [passage]},
            "search_results": {"description": [""] * len(search), "filename": [f"w{i}.txt" for i in range(len(search))],
                               "rank": list(range(len(search))), "title": [""] * len(search),
                               "url": [""] * len(search), "search_context": list(search)},
            "answer": {"aliases": list(aliases), "normalized_aliases": [a.lower() for a in aliases],
                       "matched_wiki_entity_name": "", "normalized_matched_wiki_entity_name": "",
                       "normalized_value": value.lower(), "type": "WikipediaEntity", "value": value}}


def test_triviaqa_grounding_filter():
    doc = format_triviaqa_rc(_trivia("France's capital is PARIS, on the Seine."))
    assert doc.endswith("Answer: PARIS") and "Context:\nFrance's capital is PARIS" in doc
    assert format_triviaqa_rc(_trivia("Known as the City of Light.")).endswith("Answer: City of Light")
    with pytest.raises(SkipRecord, match="ungrounded"):
        format_triviaqa_rc(_trivia("France is a country in Europe."))
    with pytest.raises(SchemaError, match="field 'answer': missing"):
        format_triviaqa_rc({"question": "q"})
    listed = {**_trivia("Paris"), "entity_pages": [{"wiki_context": "Paris"}]}  # list of dicts: not the card's
    with pytest.raises(SchemaError, match="field 'entity_pages': expected an object, got list"):
        format_triviaqa_rc(listed)


def test_triviaqa_value_first_across_passages_and_whole_words_only():
    # The value "Aare" is in the second passage (a search result); the alias "Aar" is a fragment of "Aarhus" in the
    # first. Per passage, aliases-after-value would ground the example on "Aar" inside "Aarhus".
    rec = _trivia("Aarhus is a city in Denmark.", value="Aare", aliases=("Aar",),
                  search=["Bern lies in a loop of the Aare river."])
    doc = format_triviaqa_rc(rec)
    assert doc.endswith("Answer: Aare") and "Context:\nBern lies in a loop of the Aare river." in doc
    # the value in a later passage wins over an alias (even a whole-word one) in an earlier passage
    rec = _trivia("The Aar is short for it.", value="Aare", aliases=("Aar",), search=["The Aare flows north."])
    assert format_triviaqa_rc(rec).endswith("Answer: Aare")
    # only the fragment anywhere: not grounded (a plain substring test alone would keep it)
    with pytest.raises(SkipRecord, match="ungrounded"):
        format_triviaqa_rc(_trivia("Aarhus is a city in Denmark.", value="Aare", aliases=("Aar",)))
    # an alias that is a whole word counts when the value is nowhere; punctuation at the edges is a boundary
    assert format_triviaqa_rc(_trivia("The Aar, as it is also called.", value="Aare", aliases=("Aar",))).endswith(
        "Answer: Aar")
    assert format_triviaqa_rc(_trivia("Made in the U.S. in 1990.", value="U.S.", aliases=())).endswith(
        "Answer: U.S.")


def test_triviaqa_window_fits_and_answer_position_varies():
    filler = " ".join(f"word{i}" for i in range(3000))
    passage = f"{filler} The capital is Paris. {filler}"
    positions = set()
    for q in range(40):
        doc = format_triviaqa_rc(_trivia(passage, qid=f"q{q}"), max_context_chars=1000)
        context = doc.split("Context:\n", 1)[1].split("\n\nQuestion:")[0]
        assert len(context) <= 1000 and "Paris" in context
        positions.add(round(context.index("Paris") / len(context), 1))
    assert len(positions) >= 6  # spread over the window, not always centred


def test_cut_window_extremes():
    p = "a " * 500 + "ANSWER" + " b" * 500
    s = p.index("ANSWER")
    assert cut_window(p, s, s + 6, 200, 0.0).startswith("ANSWER")
    assert cut_window(p, s, s + 6, 200, 0.999).endswith("ANSWER")
    assert cut_window("short", 0, 5, 200, 0.5) == "short"


SE = {"qid": 1, "question": "<p>Why does <code>x = [] * 3</code> give an empty list?</p>",
      "answers": [{"answer_id": 2, "author": "a", "author_id": 1, "author_profile": "", "pm_score": 2,
                   "selected": False, "text": "Use [0] * 3."},
                  {"answer_id": 3, "author": "b", "author_id": 2, "author_profile": "", "pm_score": 9,
                   "selected": True, "text": "Multiplying an empty list repeats nothing: x = [] * 3 is []."},
                  {"answer_id": 4, "author": "c", "author_id": 3, "author_profile": "", "pm_score": -1,
                   "selected": False, "text": "Downvoted."}],
      "date": "2010/01/01", "metadata": ["https://stackoverflow.com/questions/1"]}


def test_stackexchange_question_then_answers():
    doc = format_stackexchange(SE)
    assert doc.startswith("Question:\nWhy does x = [] * 3 give an empty list?")
    assert doc.index("Accepted answer (score 9)") < doc.index("Answer (score 2)")
    assert "Downvoted" not in doc
    with pytest.raises(SkipRecord, match="no_answers"):
        format_stackexchange({**SE, "answers": []})


def test_stackexchange_entities_unescaped_and_code_blocks_fenced():
    answer = ("<p>Compare with <code>&lt;</code> &amp; check:</p>\n\n<pre class=\"lang-py prettyprint-override\">"
              "<code>if a &lt; b and s == &quot;&lt;div&gt;&quot;:\n    print(a &amp; b)\n</code></pre>\n<p>Done.</p>")
    rec = {**SE, "question": "<p>What does &#39;&amp;&#39; do in <code>a &amp; b</code>?</p>",
           "answers": [{**SE["answers"][1], "text": answer}]}
    doc = format_stackexchange(rec)
    assert doc.startswith("Question:\nWhat does '&' do in a & b?")
    assert ("Compare with < & check:\n\n```\nif a < b and s == \"<div>\":\n    print(a & b)\n```\n\nDone."
            in doc), doc
    assert "&lt;" not in doc and "&amp;" not in doc and "<pre" not in doc


def test_reddit_thread_text_kept_whole():
    # REDDIT_threaded (card: text, num_messages, ...): the thread is one string; escaped quotes are unescaped
    rec = {"thread_id": "t1", "subreddit": "changemyview", "num_messages": 2,
           "text": "CMV: tabs beat spaces.\n&gt; tabs beat spaces\nNot in Python."}
    assert format_reddit_thread(rec) == "CMV: tabs beat spaces.\n> tabs beat spaces\nNot in Python."
    with pytest.raises(SkipRecord, match="single_message"):
        format_reddit_thread({**rec, "num_messages": 1})
    with pytest.raises(SchemaError, match="field 'text': missing"):  # the invented title/selftext/comments schema
        format_reddit_thread({"title": "t", "selftext": "s", "comments": [], "num_messages": 3})


def test_code_file():
    rec = {"repo_name": "x/y", "path": "pkg/mod.py", "copies": "1", "size": "20",
           "content": "def f(x):\n    return x\n", "license": "mit"}
    assert format_code(rec, path_field="path") == "# pkg/mod.py\ndef f(x):\n    return x\n"
    with pytest.raises(SkipRecord, match="too_long"):
        format_code({"content": "x" * 50}, max_chars=10)
    with pytest.raises(SchemaError, match="field 'content': missing"):
        format_code({"text": "x"})
    with pytest.raises(SchemaError, match="field 'path': missing"):  # a path_field the dataset does not have
        format_code({"content": "x = 1\n"}, path_field="path")
    assert format_code({"content": "x = 1\n", "path": None}, path_field="path") == "x = 1\n"


def test_plain_text_kinds():
    assert format_text({"text": " Edu text. ", "id": "<urn>", "url": "u", "score": 3.1}) == "Edu text."  # FineWeb-Edu
    wiki = {"id": "1", "url": "u", "title": "Ulm", "text": "Ulm is a city in Germany."}
    assert format_text(wiki, title_field="title") == "Ulm\n\nUlm is a city in Germany."
    pes2o = {"added": "", "created": "", "id": "1", "source": "s2orc", "text": "Abstract\n\nWe show ...",
             "version": "v2"}
    assert format_text(pes2o).startswith("Abstract")
    with pytest.raises(SkipRecord, match="too_short"):
        format_text({"text": "hi"}, min_chars=10)


def test_readme_audit_filters():
    body = "# Tool\n\nThis tool parses logs and prints a summary of failed logins. " * 4
    assert format_readme({"content": "---\nlayout: default\n---\n" + body}) == body.strip()
    with pytest.raises(SkipRecord, match="non_english"):
        format_readme({"content": "# 工具\n\n" + "这个工具解析日志并打印失败登录的摘要。" * 20})
    with pytest.raises(SkipRecord, match="changelog"):
        format_readme({"content": "# Changelog\n\n" + body})
    with pytest.raises(SkipRecord, match="changelog"):
        format_readme({"content": body, "path": "CHANGELOG.md"}, path_field="path")


def test_unknown_formatter():
    with pytest.raises(ValueError, match="unknown formatter 'nope'"):
        get_formatter("nope")


def test_triviaqa_short_aliases_and_abbreviations_match_in_their_own_case_longest_first():
    """Before, an alias "IN" (TriviaQA holds US, IN, OR, ME, ...) matched case-insensitively grounded the answer on
    the word "in"; short candidates and abbreviations now match only in their own case, and aliases longest first."""
    passage = "People in the state voted early."
    with pytest.raises(SkipRecord, match="ungrounded"):
        format_triviaqa_rc(_trivia(passage, value="Indiana", aliases=("IN", "Hoosier State")))
    # In its own case the abbreviation still grounds the example.
    doc = format_triviaqa_rc(_trivia("Indianapolis, IN is the capital.", value="Indiana", aliases=("IN",)))
    assert doc.endswith("Answer: IN")
    # Longer aliases first: "Hoosier State" wins over "IN" although the card lists "IN" first.
    doc = format_triviaqa_rc(_trivia("IN is also called the Hoosier State.", value="Indiana",
                                     aliases=("IN", "Hoosier State")))
    assert doc.endswith("Answer: Hoosier State")
    # Abbreviations of any length: "U.S." is not "u.s."; long ordinary words keep the planned case-insensitive test.
    with pytest.raises(SkipRecord, match="ungrounded"):
        format_triviaqa_rc(_trivia("the u.s. mail", value="United States", aliases=("U.S.",)))
    assert format_triviaqa_rc(_trivia("the city of light", value="Paris", aliases=("City of Light",))).endswith(
        "Answer: city of light")


def _tokens(text):
    from data.tokenizer import get_tokenizer

    return len(get_tokenizer().encode_ordinary(text)) + 1  # with its EOT


def test_retrieval_documents_fit_the_block_in_tokens():
    """3,000 characters of a numeric table are ~2,000 tokens: a character cap alone leaves the document longer than a
    1,025-token sample, and packing would split it (passage in one sample, question and answer in the next). With
    `max_tokens` the window shrinks around the answer until the whole document fits; a question longer than the
    block is skipped and counted."""
    rng = __import__("random").Random(0)
    table = " ".join(f"{rng.randint(0, 99999)}|{rng.randint(0, 999)}" for _ in range(600))
    passage = f"{table[:1500]} The capital is Paris. {table[1500:]}"
    unlimited = format_triviaqa_rc(_trivia(passage))
    assert _tokens(unlimited) > 1025  # the character cap (3,000) does not bound the tokens
    for q in range(10):
        doc = format_triviaqa_rc(_trivia(passage, qid=f"q{q}"), max_tokens=1025)
        assert _tokens(doc) <= 1025 and doc.endswith("Answer: Paris") and "The capital is Paris" in doc
        assert _tokens(doc) > 900  # the longest window that fits, not a much shorter one
    with pytest.raises(SkipRecord, match="too_long_for_block"):
        format_triviaqa_rc(_trivia(passage), max_tokens=8)
    # SQuAD v2: the card's answer span is kept in the window, answerable or not; short documents are untouched
    context = f"{table[:2000]} Paris was founded in 250 BC. {table[2000:]}"
    rec = {"id": "s1", "title": "T", "context": context, "question": "When?",
           "answers": {"text": ["250 BC"], "answer_start": [context.index("250 BC")]}}
    doc = format_squad_v2(rec, max_tokens=257)
    assert _tokens(doc) <= 257 and "founded in 250 BC" in doc and doc.endswith("Answer: 250 BC")
    doc = format_squad_v2({**rec, "answers": {"text": [], "answer_start": []}}, max_tokens=257)
    assert _tokens(doc) <= 257 and doc.endswith(NOT_IN_CONTEXT)
    short = {**rec, "context": "Paris was founded in 250 BC.", "answers": {"text": ["250 BC"], "answer_start": [21]}}
    assert format_squad_v2(short, max_tokens=257) == format_squad_v2(short)
