"""HTML -> text: resiliparse main-content extraction with a DOM pre-pass for math and code [3.1.1].

The paper's parser aims at "precision in boilerplate removal and content recall", keeps the structure
of code and math, keeps image ``alt`` text (math is often an image whose alt text is the formula), and
removes all markdown markers. Here:

1. A DOM pre-pass (resiliparse's DOM) swaps every ``<math>`` element for its TeX (the
   ``application/x-tex`` annotation, else its ``alttext``, else its text), every ``<img alt>`` for its
   alt text, and every ``<pre>`` block for its exact text; each goes in as an opaque placeholder
   paragraph so neither the extractor nor the markdown cleaner can touch it.
2. resiliparse extracts the main content (drops navigation, footers, cookie banners, sidebars).
3. Markdown markers (headings, emphasis, inline code ticks, links, quotes, rules, list bullets, RST
   underlines) are removed from the prose; then the placeholders get their math and code back, code
   with its indentation intact.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

logger = logging.getLogger(__name__)

_TOKEN = "QQXBLOCK{}QQX"
_TOKEN_RE = re.compile(r"QQXBLOCK(\d+)QQX")
_LONE_TOKEN = re.compile(r"^[ \t]+(QQXBLOCK\d+QQX)[ \t]*$", re.MULTILINE)
_MATHY_ALT = re.compile(r"\\[a-zA-Z]+|[\^_=]|\\\(|\$")

# Markdown (and reStructuredText) markers, applied line by line to prose only [3.1.1].
_RULE_LINE = re.compile(r"^\s*(?:([=\-~^*_#+])\1{2,}|```+[\w+-]*)\s*$")  # ---, ===, ***, RST underlines, ``` fences
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_QUOTE = re.compile(r"^\s{0,3}>\s?")
_BULLET = re.compile(r"^(\s*)[-*+]\s+(?=\S)")
_RST_DIRECTIVE = re.compile(r"^\s*\.\.\s+[\w-]+\s*::\s*")
_TRAILING_UNDERLINE = re.compile(r"\s+([=\-~^])\1{3,}\s*$")  # "Examples ========" once <p> joined the lines
_IMAGE_OR_LINK = re.compile(r"!?\[([^\]\n]*)\]\([^)\n]*\)")
# "__" counts as strong only around several words, so dunder names (__init__) survive.
_STRONG = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*|(?<!\w)__(?=\S)([^_\n]*\s[^_\n]*?)(?<=\S)__(?!\w)")
_EMPHASIS = re.compile(r"(?<![\w*])([*_])(?=\S)([^*_\n]+?)(?<=\S)\1(?![\w*])")
_CODE_TICKS = re.compile(r"(`+)([^`\n]+?)\1")
_BLANK_RUNS = re.compile(r"\n{3,}")


@dataclass
class ExtractConfig:
    """Settings of the HTML extractor.

    Args:
        main_content: keep only the main content (resiliparse's boilerplate removal).
        keep_math: turn MathML into TeX and keep math image alt text [3.1.1].
        keep_code: keep ``<pre>`` blocks verbatim, indentation included [3.1.1].
        keep_alt_text: keep the alt text of every image, not only math ones [3.1.1].
        remove_markdown: remove markdown markers from the prose [3.1.1].
        min_chars: documents with fewer extracted characters are dropped as ``empty_extraction``.
    """

    main_content: bool = True
    keep_math: bool = True
    keep_code: bool = True
    keep_alt_text: bool = True
    remove_markdown: bool = True
    min_chars: int = 1

    def __post_init__(self) -> None:
        if self.min_chars < 1:
            raise ValueError(f"extract.min_chars must be >= 1, got {self.min_chars}.")


def remove_markdown(text: str) -> str:
    """Remove markdown markers from prose, keeping the words they decorate."""
    lines = []
    for line in text.split("\n"):
        if _RULE_LINE.match(line):
            continue
        line = _HEADING.sub(r"\1", line)
        line = _QUOTE.sub("", line)
        line = _BULLET.sub(r"\1", line)
        line = _RST_DIRECTIVE.sub("", line)
        line = _TRAILING_UNDERLINE.sub("", line)
        line = _IMAGE_OR_LINK.sub(r"\1", line)
        line = _CODE_TICKS.sub(r"\2", line)
        line = _STRONG.sub(lambda m: m.group(1) or m.group(2), line)
        line = _EMPHASIS.sub(r"\2", line)
        lines.append(line.rstrip())
    return "\n".join(lines)


def _math_tex(node) -> str:
    for annotation in node.query_selector_all("annotation"):
        if "tex" in (annotation.getattr("encoding") or "").lower():
            return annotation.text.strip()
    if alt := node.getattr("alttext"):
        return alt.strip()
    return " ".join(node.text.split())


def extract_html(html: str, config: ExtractConfig | None = None) -> tuple[str, dict]:
    """Extract the text of one HTML page; returns (text, info).

    ``info`` counts math formulas, code blocks and code characters, and gives ``code_lines``: the
    ``[start, end)`` line ranges of the code blocks in the text. Later steps that rewrite text within
    lines (PII stand-ins) keep them valid; line dedup, which removes lines, runs after the heuristics.
    """
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    config = config or ExtractConfig()
    tree = HTMLTree.parse(html)
    blocks: list[str] = []
    code_blocks: set[int] = set()
    info = {"math": 0, "code": 0, "code_chars": 0}

    def swap(node, text: str, block: bool) -> None:
        holder = tree.create_element("p" if block else "span")
        holder.append_child(tree.create_text_node(" " + _TOKEN.format(len(blocks)) + " "))
        blocks.append(text)
        node.replace_with(holder)

    if tree.body is not None:
        if config.keep_math:
            for node in tree.body.query_selector_all("math"):
                tex = _math_tex(node)
                display = (node.getattr("display") or "") == "block"
                swap(node, f"$${tex}$$" if display else f"${tex}$", display)
                info["math"] += 1
        if config.keep_alt_text or config.keep_math:
            for node in tree.body.query_selector_all("img[alt]"):
                alt = (node.getattr("alt") or "").strip()
                if not alt:
                    continue
                if _MATHY_ALT.search(alt) and config.keep_math:
                    swap(node, f"${alt}$", False)
                    info["math"] += 1
                elif config.keep_alt_text:
                    swap(node, alt, False)
        if config.keep_code:
            for node in tree.body.query_selector_all("pre"):
                code = node.text.strip("\n")
                if code.strip():
                    code_blocks.add(len(blocks))
                    swap(node, code, True)
                    info["code"] += 1
                    info["code_chars"] += len(code)

    text = extract_plain_text(
        tree, main_content=config.main_content, preserve_formatting=True, alt_texts=config.keep_alt_text, links=False
    )
    if config.remove_markdown:
        text = remove_markdown(text)
    # Normalise blank lines and the padding of block placeholders before the code goes back in, so the
    # code itself stays byte for byte.
    text = text.replace("\xa0", " ")  # layout &nbsp; (pydoc indents with them)
    text = _LONE_TOKEN.sub(r"\1", "\n".join(line if line.strip() else "" for line in text.split("\n")))
    text = _BLANK_RUNS.sub("\n\n", text).strip("\n")
    text, info["code_lines"] = _restore_blocks(text, blocks, code_blocks)
    return text, info


def _restore_blocks(text: str, blocks: list[str], code_blocks: set[int]) -> tuple[str, list[list[int]]]:
    """Put the blocks back in place of their placeholders; returns the text and the [start, end) line
    ranges the code blocks occupy in it (what the heuristics treat as code, not prose [3.1.1])."""
    out: list[str] = []
    ranges: list[list[int]] = []
    line = pos = 0
    for match in _TOKEN_RE.finditer(text):
        before = text[pos : match.start()]
        line += before.count("\n")
        index = int(match.group(1))
        block = blocks[index]
        if index in code_blocks:
            ranges.append([line, line + block.count("\n") + 1])
        line += block.count("\n")
        out += [before, block]
        pos = match.end()
    out.append(text[pos:])
    return "".join(out), ranges


class HtmlExtractor(BaseFilter):
    """Pipeline step: HTML documents become text; text documents (``format == "text"``) pass through.

    Drop reasons: ``empty_extraction`` (nothing left after boilerplate removal) and ``extraction_error``
    (the parser failed on the page).
    """

    name = "⛏ extract"

    def __init__(self, config: ExtractConfig | None = None):
        super().__init__()
        self.config = config or ExtractConfig()

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if doc.metadata.get("format", "html") == "html":
            try:
                doc.text, info = extract_html(doc.text, self.config)
            except Exception as err:  # one bad page must never end the run
                logger.warning("extraction failed on %s: %s", doc.id, err)
                return False, "extraction_error"
            doc.metadata.update(info)
            doc.metadata["format"] = "text"
        if len(doc.text.strip()) < self.config.min_chars:
            return False, "empty_extraction"
        return True
