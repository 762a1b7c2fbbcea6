"""Code cites the repository's own documents, and only what they contain.

Comments and docstrings explain a choice by citing a section: `docs/DESIGN.md "Data order is a pure function of the
optimizer step"`, `docs/DATASET.md, "Packing"`, `DESIGN, "Logs"` (DESIGN alone means docs/DESIGN.md). These tests
fail when

- a cited heading does not exist in that document (case, punctuation and markdown are ignored, and a citation may
  give only the heading's first words: `"Checkpoint cost"` cites "Checkpoint cost at 750M (CPU; ...)");
- code refers to a text outside the repository: "the spec", "spec's", "issue 14", "issue #14". A reader of the
  repository has neither, so say the thing itself or cite docs/ instead.

Only comments and string literals of Python files are read (a variable called `spec` is code, not a citation), and
every line of shell files, the Makefile and the Dockerfile. Citations in README.md and docs/*.md are checked too, and
README.md, docs/*.md and docker/README.md must refer to no text outside the repository either; nor may the tests'
comments and strings (tests/*.py, except this file, whose examples must contain the patterns) or the string values
of the source definitions (data/sources/*.json: descriptions, notes, derivations).
"""

from __future__ import annotations

import io
import json
import re
import tokenize
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CODE_ROOTS = ("model", "data", "launcher", "scripts", "docker")
TEXT_FILES = ("Makefile", "Dockerfile")
SHELL_SUFFIXES = {".sh"}

# A document name, then optionally `,` `:` or `(`, then a quoted heading (the quote may be escaped inside a string
# literal). The name is a path ending in an upper-case `.md` file, or DESIGN alone.
CITATION = re.compile(
    r"""(?P<doc>(?:[\w.-]+/)*[A-Z][A-Z0-9_]*\.md|\bDESIGN\b)(?:'s)?`?\s*[,:(]?\s*\(?\s*\\?["“](?P<heading>[^"”\\]+)\\?["”]"""
)
# Texts a reader of the repository does not have. "the spec", "spec's", a bare "(spec)" or "spec:" in prose;
# "issue 24", "issue #24", "issues 14 and 15". Whole words only: "specified", "inspect", "spectral", "specs",
# "specialization" and "respec" do not match, nor does "issue" without a number.
OUTSIDE_TEXT = re.compile(
    r"""(?ix)
    \bthe\s+spec\b(?!-)            # the spec, The spec
    | \bspec['’]s\b                # spec's
    | \(\s*spec\s*[):]             # (spec) (spec: ...)
    | \bdocs:\s*spec\b             # docs: spec
    | \bissues?\s+\#?\d+\b         # issue 14, issue #14, issues 14
    | \bissue\#\d+\b               # issue#14
    """
)
MD_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def normalise(text: str) -> list[str]:
    """Lower-case words of a heading or citation: markdown, punctuation and line breaks do not count."""
    text = text.replace("\\", " ")
    return re.findall(r"[a-z0-9]+", text.lower())


def headings(doc: Path) -> list[list[str]]:
    in_fence = False
    found = []
    for line in doc.read_text().splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        elif not in_fence and re.match(r"#{1,6} ", line):
            found.append(normalise(line.lstrip("#")))
    return found


def resolve(doc: str, source: Path) -> Path:
    if doc in ("DESIGN", "DESIGN.md"):
        return REPO / "docs" / "DESIGN.md"
    if "/" in doc:
        return REPO / doc
    for candidate in (REPO / "docs" / doc, REPO / doc, source.parent / doc):
        if candidate.is_file():
            return candidate
    return REPO / "docs" / doc


def heading_exists(doc: Path, cited: str) -> bool:
    words = normalise(cited)
    return bool(words) and any(h[: len(words)] == words for h in headings(doc))


def code_files() -> list[Path]:
    """Product and script code. Under data/ only its packages and the folders that hold code or definitions: built
    datasets (data/demo/, data/unified_*/, ...) are outputs, not code."""
    files = []
    for root in CODE_ROOTS:
        for path in sorted((REPO / root).rglob("*")):
            rel = path.relative_to(REPO)
            if "__pycache__" in rel.parts or not path.is_file():
                continue
            built_data = rel.parts[0] == "data" and len(rel.parts) > 2
            if built_data and not (REPO / "data" / rel.parts[1] / "__init__.py").is_file():
                continue
            if path.suffix == ".py" or path.suffix in SHELL_SUFFIXES:
                files.append(path)
    return files + [REPO / name for name in TEXT_FILES if (REPO / name).is_file()]


def prose(path: Path) -> list[tuple[int, str]]:
    """(first line, text) of every comment block and string literal of a Python file; every line of any other file.
    Consecutive comment lines are one block, so a citation may wrap."""
    source = path.read_text()
    if path.suffix != ".py":
        return [(1, source)]
    blocks: list[tuple[int, str]] = []
    comment: list[str] = []
    comment_start = comment_end = 0
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        return [(1, source)]
    for tok in tokens:
        if tok.type == tokenize.COMMENT:
            if comment and tok.start[0] == comment_end + 1:
                comment.append(tok.string.lstrip("#"))
            else:
                if comment:
                    blocks.append((comment_start, "\n".join(comment)))
                comment, comment_start = [tok.string.lstrip("#")], tok.start[0]
            comment_end = tok.start[0]
        elif tok.type == tokenize.STRING or tok.type == getattr(tokenize, "FSTRING_MIDDLE", -1):
            blocks.append((tok.start[0], tok.string))
    if comment:
        blocks.append((comment_start, "\n".join(comment)))
    return blocks


def line_of(start: int, text: str, offset: int) -> int:
    return start + text.count("\n", 0, offset)


def rel(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def broken_citations(paths: list[Path], as_prose=prose) -> list[str]:
    bad = []
    for path in paths:
        for start, text in as_prose(path):
            for m in CITATION.finditer(text):
                doc = resolve(m["doc"], path)
                heading = " ".join(m["heading"].split())
                if not doc.is_file():
                    bad.append(f"{rel(path)}:{line_of(start, text, m.start())}: {m['doc']} does not exist")
                elif not heading_exists(doc, heading):
                    bad.append(f'{rel(path)}:{line_of(start, text, m.start())}: {rel(doc)} has no heading "{heading}"')
    return bad


def outside_references(paths: list[Path], as_prose=prose) -> list[str]:
    bad = []
    for path in paths:
        lines = path.read_text().splitlines()
        found = sorted({line_of(start, text, m.start()): " ".join(m.group(0).split())
                        for start, text in as_prose(path) for m in OUTSIDE_TEXT.finditer(text)}.items())
        bad += [f"{rel(path)}:{lineno}: {hit!r} in: {lines[lineno - 1].strip()}" for lineno, hit in found]
    return bad


def python_test_files() -> list[Path]:
    """The tests' Python files, without this one: its examples of what the checks catch must contain the patterns."""
    return [path for path in sorted((REPO / "tests").glob("*.py")) if path.resolve() != Path(__file__).resolve()]


def source_definitions() -> list[Path]:
    return sorted((REPO / "data" / "sources").glob("*.json"))


def json_strings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string value of a JSON file (keys are names, not prose), at the line the value starts."""
    lines = path.read_text().splitlines()
    found: list[tuple[int, str]] = []

    def walk(obj) -> None:
        if isinstance(obj, dict):
            for value in obj.values():
                walk(value)
        elif isinstance(obj, list):
            for value in obj:
                walk(value)
        elif isinstance(obj, str):
            needles = (json.dumps(obj, ensure_ascii=False), json.dumps(obj))
            lineno = next((i for i, line in enumerate(lines, 1) if any(n in line for n in needles)), 1)
            found.append((lineno, obj))

    walk(json.loads(path.read_text()))
    return found


def markdown_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def user_docs() -> list[Path]:
    """The documents a user reads: the citation-checked markdown files and the Docker image's README."""
    return [*markdown_files(), REPO / "docker" / "README.md"]


def test_code_cites_headings_that_exist():
    bad = broken_citations(code_files())
    assert not bad, "citations of headings that do not exist (fix the heading or the citation):\n" + "\n".join(bad)


def test_docs_cite_headings_that_exist():
    bad = broken_citations(markdown_files(), as_prose=lambda p: [(1, p.read_text())])
    assert not bad, "citations of headings that do not exist:\n" + "\n".join(bad)


def test_code_refers_to_no_text_outside_the_repository():
    bad = outside_references(code_files())
    assert not bad, ('code cites "the spec" or an issue number, which a reader of the repository does not have; say '
                     'it plainly or cite docs/DESIGN.md "Heading":\n' + "\n".join(bad))


def test_docs_refer_to_no_text_outside_the_repository():
    docs = user_docs()
    assert all(path.is_file() for path in docs), [rel(path) for path in docs if not path.is_file()]
    bad = outside_references(docs)
    assert not bad, ('a document cites "the spec" or an issue number, which a reader of the repository does not have; '
                     'say the thing itself (e.g. "the base config\'s micro-batch") or cite docs/ instead:\n'
                     + "\n".join(bad))


def test_tests_refer_to_no_text_outside_the_repository():
    files = python_test_files()
    assert files and REPO / "tests" / "test_docs.py" not in files
    bad = outside_references(files)
    assert not bad, ('a test\'s comment or string cites "the spec" or an issue number, which a reader of the '
                     'repository does not have; say the thing itself (e.g. "the base config\'s dropout") or cite '
                     'docs/:\n' + "\n".join(bad))


def test_source_definitions_refer_to_no_text_outside_the_repository():
    files = source_definitions()
    assert files
    bad = outside_references(files, as_prose=json_strings)
    assert not bad, ('a source definition\'s text cites "the spec" or an issue number, which a reader of the '
                     'repository does not have; say the thing itself (e.g. "the data plan\'s ~20%"):\n'
                     + "\n".join(bad))


def test_readme_links_resolve():
    readme = REPO / "README.md"
    missing = [t for t in MD_LINK.findall(readme.read_text())
               if "://" not in t and not t.startswith("#") and not (REPO / t.split("#")[0]).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_design_doc_exists_and_cites_nothing_outside():
    text = (REPO / "docs" / "DESIGN.md").read_text()
    assert "shared/" not in text and not OUTSIDE_TEXT.search(text)


# The checks themselves: each must catch what it is for and pass what it is not.
@pytest.mark.parametrize("text", [
    "the spec's 12 x 8", "The spec says", "as in the spec", "(spec)", "docs: spec, x", "issue 24", "issue #14",
    "Issue 16's missing piece", "issues 14 and 15",
])
def test_outside_text_pattern_catches(text):
    assert OUTSIDE_TEXT.search(text)


@pytest.mark.parametrize("text", [
    "specified", "inspect", "spectral", "specs", "specialization", "respec", "a spec string", "the issue is",
    "an issue with 3 ranks", "spec = os.environ", "the spectrum",
])
def test_outside_text_pattern_passes(text):
    assert not OUTSIDE_TEXT.search(text)


def test_citation_pattern_reads_every_form(tmp_path):
    forms = ['docs/DESIGN.md "Logs"', 'DESIGN, "Logs"', 'DESIGN "Logs"', 'DESIGN.md, "Logs"', '(DESIGN, "Logs")',
             'docs/DESIGN.md ("Logs")', 'f"(docs/DESIGN.md, \\"Logs\\")"']
    for form in forms:
        m = CITATION.search(form)
        assert m and m["heading"] == "Logs" and resolve(m["doc"], REPO).name == "DESIGN.md", form


def test_citation_check_fails_on_a_missing_heading(tmp_path):
    good = tmp_path / "good.py"
    good.write_text('# see DESIGN, "Data order is a pure function\n# of the optimizer step"\nx = 1\n')
    bad = tmp_path / "bad.py"
    bad.write_text('"""See docs/DESIGN.md "A heading nobody wrote"."""\n')
    as_prose = prose
    assert broken_citations([good], as_prose) == []
    problems = broken_citations([bad], as_prose)
    assert len(problems) == 1 and "A heading nobody wrote" in problems[0]


def test_outside_check_reads_comments_and_strings_only(tmp_path):
    path = tmp_path / "x.py"
    path.write_text('spec = "a"  # fine\nfor ty, spec in pairs:\n    pass\n# the spec says so\nhelp_ = "(issue 24)"\n')
    found = outside_references([path])
    assert [f.split(":")[1] for f in found] == ["4", "5"]


def test_outside_check_reads_json_string_values(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{\n  "spec": "fine",\n  "a": {"description": "as the spec says"},\n'
                    '  "b": [1, "see issue 24"]\n}\n')
    found = outside_references([path], as_prose=json_strings)
    assert [f.split(":")[1] for f in found] == ["3", "4"]
