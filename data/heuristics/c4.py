"""C4's page-level rules (Raffel et al., 2020, section 2.2) as one family.

datatrove's ``C4QualityFilter`` also rewrites the page line by line (drops lines without terminal
punctuation, with "javascript", with cookie-policy phrases); here boilerplate removal is the extractor's
job (resiliparse main content [3.1.1]) and heuristics only decide, never edit. What stays:

- ``lorem_ipsum``: placeholder text in the prose, on every domain (a code example's "lorem ipsum"
  string is test data, not a placeholder page);
- ``curly_bracket``: any ``{`` in the prose. Off by default: C4 used it to keep code out, and the paper
  keeps code pages [3.1.1 "Code and reasoning data"]; even on, code blocks are exempt (they are not prose).
"""

from __future__ import annotations

from dataclasses import dataclass

from data.heuristics.family import FamilyConfig, RuleFamily
from data.heuristics.view import PageView


@dataclass
class C4Config(FamilyConfig):
    """C4's rules (the paper's; ``curly_bracket`` off, see the module docstring)."""

    lorem_ipsum: bool = True
    curly_bracket: bool = False


class C4Rules(RuleFamily):
    """Placeholder text and (optionally) braces in the prose."""

    name = "⛰ c4"
    family = "c4"

    def check(self, view: PageView) -> str | None:
        if self.config.lorem_ipsum and "lorem ipsum" in view.prose.lower():
            return "lorem_ipsum"
        if self.config.curly_bracket and "{" in view.prose:
            return "curly_bracket"
        return None
