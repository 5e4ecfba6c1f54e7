"""What each rule family measures: a page split into prose and code, with math markup set aside [3.1.1].

The paper gives code and math pages "domain-specific" extraction and heuristics [3.1.1 "Code and reasoning
data"]. Here that is one view of the page that every family reads:

- code lines are the lines of ``<pre>`` blocks, which extraction records as line ranges
  (``metadata["code_lines"]``); a plain-text ``code`` document without them has its lines classified by
  :data:`data.domains.CODE_LINE` (source-looking or indented lines);
- prose is every other line, with inline and display math (``$...$``, ``$$...$$``, ``\\(...\\)``,
  ``\\[...\\]``) taken out of it, so symbol, word-length and repetition rules judge the words around the
  formulas and never the TeX; the document itself keeps its code and math untouched.

Prose rules (Gopher, C4, FineWeb, dirty words, token KL) read the prose; the code of a documentation page
counts toward its length (Gopher) and is judged for repeated content by the Llama 3 family's line rule,
which is what catches a log dump pasted in a ``<pre>`` block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from data.domains import CODE_LINE

WORD = re.compile(r"\w+", re.UNICODE)
_MATH = re.compile(r"\$\$.+?\$\$|\\\[.+?\\\]|\\\(.+?\\\)|\$(?![\s{])[^$\n]+(?<!\s)\$", re.DOTALL)
# lid.176 codes of scripts written without spaces between words: word-count rules cannot apply to them.
NO_SPACE_LANGS = frozenset({"ja", "zh", "th", "lo", "km", "my", "bo", "wuu", "yue"})


def code_line_mask(lines: list[str], metadata: dict, domain: str) -> list[bool]:
    """Which of ``lines`` (the text split on ``\\n``) are code."""
    mask = [False] * len(lines)
    ranges = metadata.get("code_lines")
    if ranges is not None:
        for start, end in ranges:
            mask[start:end] = [True] * len(mask[start:end])
    elif domain == "code":
        mask = [bool(CODE_LINE.match(ln)) or ln.startswith(("    ", "\t")) for ln in lines]
    return mask


@dataclass
class PageView:
    """One document as the rule families see it (built once, read by every family)."""

    text: str
    lang: str
    domain: str
    metadata: dict

    @cached_property
    def _split(self) -> tuple[str, list[str]]:
        lines = self.text.split("\n")
        mask = code_line_mask(lines, self.metadata, self.domain)
        prose = "\n".join("" if is_code else ln for ln, is_code in zip(lines, mask))
        code = [ln for ln, is_code in zip(lines, mask) if is_code and ln.strip()]
        return _MATH.sub(" ", prose), code

    @property
    def prose(self) -> str:
        """The text with code lines blanked and math markup removed (blank lines kept: paragraphs survive)."""
        return self._split[0]

    @property
    def code_lines(self) -> list[str]:
        """Non-empty code lines."""
        return self._split[1]

    @cached_property
    def prose_lines(self) -> list[str]:
        """Non-empty prose lines."""
        return [ln for ln in self.prose.split("\n") if ln.strip()]

    @cached_property
    def lines(self) -> list[str]:
        """Every non-empty line of the document, code included."""
        return [ln for ln in self.text.split("\n") if ln.strip()]

    @cached_property
    def prose_words(self) -> list[str]:
        """Lower-case words of the prose."""
        return WORD.findall(self.prose.lower())

    @cached_property
    def words(self) -> list[str]:
        """Lower-case words of the whole document, code included."""
        return WORD.findall(self.text.lower())

    @property
    def spaced(self) -> bool:
        """Whether the language separates words with spaces (word counts mean something)."""
        return self.lang not in NO_SPACE_LANGS
