"""Quality measurements and filters on hand-made documents with known answers: copyable tokens (against a brute
force reference), language detection (German is not "non-English" outside READMEs), each filter on a document
that has its problem and on clean ones it must not touch, and the build's counting and max-share stop."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from data import build
from data.quality import (
    FilterShareError,
    QualityFilters,
    collapse_duplicate_lines,
    copyable_stats,
    detect_language,
    duplicated_line_share,
    grounded_answer,
    has_front_matter,
    is_changelog,
    near_duplicate_flags,
    quote_reply_stats,
)
from data.source_config import Input
from data.tokenizer import get_tokenizer


def brute_copyable(docs, k):
    """The definition, literally: t_i (i >= k) is copyable if some j < i (j >= k) has t_{j-k..j} == t_{i-k..i};
    distance i - j for the largest such j."""
    count, dists = 0, []
    for d in docs:
        d = list(d)
        for i in range(k, len(d)):
            js = [j for j in range(k, i) if d[j - k : j + 1] == d[i - k : i + 1]]
            if js:
                count += 1
                dists.append(i - max(js))
    return count, dists


def test_copyable_block_repeated_twice():
    block = list(range(1000, 1050))  # 50 distinct tokens
    stats = copyable_stats([np.array(block + block)])
    for k in (1, 2, 3, 4):
        # in the second copy every token whose k predecessors are inside the copy: 50 - k of them, 50 back
        assert stats[k]["copyable"] == 50 - k and stats[k]["tokens"] == 100
        assert stats[k]["mean_distance"] == 50.0


def test_copyable_needs_the_same_next_token():
    # "1 2 3" recurs but was followed by 4, not 9: 9 is not copyable at k=3; "2 3" -> no; "3" -> no
    stats = copyable_stats([np.array([1, 2, 3, 4, 5, 1, 2, 3, 9])], ks=(1, 2, 3))
    assert [stats[k]["copyable"] for k in (1, 2, 3)] == [2, 1, 0]  # k=1: 2 (after 1), 3 (after 2); k=2: 3


def test_copyable_never_crosses_documents_and_matches_brute_force():
    assert copyable_stats([np.array([5, 6, 7]), np.array([5, 6, 7])])[1]["copyable"] == 0
    rng = np.random.default_rng(7)
    docs = [rng.integers(0, 4, rng.integers(1, 60)) for _ in range(30)]  # small vocabulary: many repeats
    stats = copyable_stats(docs, long_range=20)
    for k in (1, 2, 3, 4):
        count, dists = brute_copyable(docs, k)
        assert stats[k]["copyable"] == count, k
        assert stats[k]["mean_distance"] == pytest.approx(np.mean(dists)), k
        assert stats[k]["long_range"] == sum(d >= 20 for d in dists), k


def test_near_duplicates():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 50000, 400)
    b = a.copy()
    b[200] = 7  # one token edited: Jaccard of 5-shingles ~0.98
    c = rng.integers(0, 50000, 400)
    assert near_duplicate_flags([a, c, b]).tolist() == [False, False, True]


EN = ("The Federal Constitution sets out the rights and duties of the citizens. According to Article 5, the law is "
      "the basis and the limit of all activity of the state, and it is applied by the cantons.")
DE = ("Die Bundesverfassung regelt die Rechte und Pflichten der Bürger. Gemäss Artikel 5 ist das Recht Grundlage und "
      "Schranke staatlichen Handelns, und es wird durch die Kantone umgesetzt.")
ZH = "# 工具\n\n" + "这个工具解析日志并打印失败登录的摘要。" * 10
FR = ("Ce programme analyse les journaux et affiche un résumé des connexions échouées pour chaque utilisateur du "
      "système, avec la date et heure de la dernière tentative.")


def test_detect_language():
    assert detect_language(EN) == "en" and detect_language(DE) == "de" and detect_language(ZH) == "zh"
    assert detect_language(FR) == "other" and detect_language("Привет, " * 20) == "other"
    assert detect_language("ok") == "unknown"
    # code blocks do not count: an English README full of code is English
    assert detect_language(EN + "\n```\nfor x in range(10):\n    print(x, x * x, der, und, die)\n```\n") == "en"


def test_german_is_kept_outside_readmes_and_removed_in_readmes():
    assert QualityFilters().apply(DE)[0] == DE  # default filters (Wikipedia DE, Swiss law): untouched
    readme = QualityFilters.from_config({"front_matter": True, "changelog": True, "languages": ["en"]})
    assert readme.apply(DE)[1] == "language" and readme.apply(ZH)[1] == "language"
    assert readme.apply(EN) == (EN, "", [])


def test_readme_filters_on_problem_and_clean_documents():
    f = QualityFilters.from_config({"front_matter": True, "changelog": True, "languages": ["en"]})
    front = "---\nlayout: default\ntitle: Tool\n---\n" + EN
    assert has_front_matter(front) and not has_front_matter("---\n\nJust a rule line\n---\n" + EN)
    kept, reason, mods = f.apply(front)
    assert kept == EN and reason == "" and [m[0] for m in mods] == ["front_matter"]
    log = "# Project\n\n## [1.2.0] - 2021-03-01\n- fix\n## [1.1.0] - 2021-01-01\n- add\n## [1.0.0]\n- first\n"
    assert is_changelog(log) and is_changelog("# Changelog\n\n" + EN) and is_changelog(EN, "docs/CHANGES.md")
    assert f.apply(log)[1] == "changelog" and f.apply(EN, {"p": "HISTORY.rst"}, "p")[1] == "changelog"
    clean = "# Tool\n\nInstall with pip. Version 2.0 of the tool adds a parser.\n\n" + EN
    assert not is_changelog(clean, "README.md") and f.apply(clean, {"p": "README.md"}, "p") == (clean, "", [])


def test_reddit_quote_reply_share():
    thread = "Title\n\n---\n\n> RoPE generalises to other positions.\n\nOnly with the right base." + " x" * 30
    flat = "Title\n\n---\n\nRoPE generalises.\n\n---\n\nI disagree with that entirely." + " y" * 30
    assert quote_reply_stats(thread)[2] and not quote_reply_stats(flat)[2]
    assert not quote_reply_stats(">>> import os\nos.getcwd()")[2]  # a doctest prompt is not a quote
    drop_all = QualityFilters.from_config({"quote_reply_keep_share": 0.0})
    keep_all = QualityFilters.from_config({"quote_reply_keep_share": 1.0})
    assert drop_all.apply(thread)[0] == thread and drop_all.apply(flat)[1] == "no_quote_reply"
    assert keep_all.apply(flat)[0] == flat
    flats = [flat + f" {i}" for i in range(2000)]
    kept = sum(QualityFilters.from_config({"quote_reply_keep_share": 0.3}).apply(t)[0] is not None for t in flats)
    assert 0.27 < kept / 2000 < 0.33  # the configured share, drawn per document from its hash


def test_duplicate_lines_collapse():
    lines = [f"line number {i} of the subtitle dump, spoken" for i in range(12)]
    windowed = "\n".join(lines[:8] + lines[4:12]) + "\n"  # windowing overlap: lines 4..7 twice
    assert duplicated_line_share(windowed) == (4, 16)
    assert collapse_duplicate_lines(windowed) == "\n".join(lines) + "\n"
    f = QualityFilters.from_config({"collapse_lines": {"window": 16, "min_chars": 20}})
    kept, _, mods = f.apply(windowed)
    assert kept == "\n".join(lines) + "\n" and mods[0][0] == "duplicate_lines"
    code = "if a:\n    pass\nelse:\n    pass\n}\n}\n" * 4  # short lines repeat legitimately
    assert f.apply(code) == (code, "", []) and f.apply(EN) == (EN, "", [])


def test_min_chars_and_grounded_answers():
    assert QualityFilters().apply("tiny")[1] == "min_chars" and QualityFilters().apply(EN)[0] == EN
    assert grounded_answer("Context:\nUlm lies on the Danube.\n\nQuestion: Where?\nAnswer: the Danube") == "grounded"
    assert grounded_answer("Context:\nUlm.\n\nQuestion: Who?\nAnswer: The answer is not in the context.") == \
        "unanswerable"
    assert grounded_answer("Context:\nUlm.\n\nQuestion: Who?\nAnswer: Einstein") == "ungrounded"
    assert grounded_answer(EN) is None


@pytest.mark.parametrize("cfg, message", [
    ({"langauges": ["en"]}, "unknown filter(s) ['langauges']"),
    ({"languages": ["english"]}, "languages: ['english']"),
    ({"quote_reply_keep_share": 2}, "quote_reply_keep_share: 2"),
    ({"max_removed_share": 0}, "max_removed_share: 0"),
])
def test_bad_filter_config(cfg, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        QualityFilters.from_config(cfg)


def _jsonl(path: Path, texts) -> dict:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return {"type": "jsonl", "path": str(path)}


def test_fetch_counts_removed_documents_and_tokens(tmp_path):
    enc = get_tokenizer()
    a_texts = [f"{EN} Document {i}." for i in range(30)] + ["tiny", f"{EN} Document 3."]  # 1 short, 1 duplicate
    b_texts = [f"{EN} Document {i}." for i in range(25, 40)]  # 5 duplicates of source a's documents
    fa = QualityFilters()
    a = Input("a", "a", 1.0, _jsonl(tmp_path / "a.jsonl", a_texts), "text", filters=fa)
    b = Input("b", "b", 1.0, _jsonl(tmp_path / "b.jsonl", b_texts), "text", filters=fa)
    seen = set()
    sa = build.fetch(a, tmp_path / "wa", 10**9, docs_per_part=10, seen=seen)
    sb = build.fetch(b, tmp_path / "wb", 10**9, docs_per_part=10, seen=seen)
    assert sa["documents"] == 30 and sb["documents"] == 10
    assert sa["filtered"] == {"min_chars": {"documents": 1, "tokens": len(enc.encode_ordinary("tiny")) + 1},
                              "duplicate": {"documents": 1, "tokens": len(enc.encode_ordinary(a_texts[3])) + 1}}
    dup_tokens = sum(len(enc.encode_ordinary(t)) + 1 for t in b_texts[:5])
    assert sb["filtered"] == {"duplicate": {"documents": 5, "tokens": dup_tokens}}
    # resume: the dedup state is rebuilt from disk, so a fresh `seen` gives the same verdicts
    assert build.load_seen([tmp_path / "wa"]) | build.load_seen([tmp_path / "wb"]) == seen
    # without a shared `seen` a source deduplicates only against itself
    sb2 = build.fetch(b, tmp_path / "wb2", 10**9, docs_per_part=10)
    assert sb2["documents"] == 15 and sb2["filtered"] == {}


def test_fetch_stops_when_a_filter_removes_too_much(tmp_path):
    texts = [f"{EN} {i}" for i in range(40)] + ["tiny"] * 160  # 80% removed by min_chars (schema-mismatch-like)
    inp = Input("s", "s", 1.0, _jsonl(tmp_path / "s.jsonl", texts), "text", filters=QualityFilters())
    with pytest.raises(FilterShareError, match=r"filter 'min_chars' removed 160 of 200 documents \(80.0%\)"):
        build.fetch(inp, tmp_path / "w", 10**9, docs_per_part=1000)
    assert not list((tmp_path / "w").glob("fetch-*"))  # nothing written: a rerun starts clean
    lenient = Input("s", "s", 1.0, inp.loader, "text", filters=QualityFilters(max_removed_share=0.9))
    assert build.fetch(lenient, tmp_path / "w", 10**9, docs_per_part=1000)["documents"] == 40
