"""One rule family as one datatrove filter step, gated by domain and language.

A family runs on a document when it is enabled, the document's domain (``metadata["domain"]``, set by
:class:`data.domains.DomainTagger`) is in ``domains`` and its language (``metadata["lang"]``) is in
``languages`` (``None``: every language). The first rule it breaks is the drop reason, prefixed with the
family's name (``gopher_repetition:dup_line_ratio``) so the report says which family dropped what.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

from data.heuristics.view import PageView
from hf_llama3.recipe_loader import bounds

DOMAINS = ("general", "code", "math")
Domain = Literal["general", "code", "math"]


def ratio(default: float, help: str = "a share in [0, 1]") -> Any:
    """A threshold field on a share: the recipe loader checks [0, 1] and names the key when it is not."""
    return field(default=default, metadata=bounds(help, min=0.0, max=1.0))


def check_ratios(config: object) -> None:
    """The [0, 1] check for configs built in code (the recipe loader checks recipes before this runs)."""
    for f in fields(config):
        value = getattr(config, f.name)
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if "ratio" in f.name and is_number and not 0.0 <= value <= 1.0:
            raise ValueError(f"heuristics {type(config).__name__}.{f.name} must be in [0, 1], got {value}.")


@dataclass
class FamilyConfig:
    """Gate of one family.

    Args:
        enabled: run the family at all.
        domains: document domains it judges (``general``, ``code``, ``math``).
        languages: lid.176 codes it judges; ``None`` for every language.
        code_page_min_lines_ratio: a page is a code page (its family may judge it with code-page limits)
            when its domain is ``code`` or ``math`` or at least this share of its non-empty lines sit in
            code blocks. Ours: 0.05 is one example line per 20; a spam page with one tiny ``<pre>`` is not.
    """

    enabled: bool = True
    domains: list[Domain] = field(default_factory=lambda: list(DOMAINS))
    languages: list[str] | None = None
    code_page_min_lines_ratio: float = ratio(0.05)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.domains) - set(DOMAINS))
        if unknown:
            raise ValueError(f"heuristics domains {unknown} unknown: use any of {list(DOMAINS)}.")
        check_ratios(self)

    def is_code_page(self, view: PageView) -> bool:
        """Whether ``view`` is a code page (see ``code_page_min_lines_ratio``)."""
        return view.domain in ("code", "math") or (
            bool(view.code_lines) and len(view.code_lines) >= self.code_page_min_lines_ratio * len(view.lines)
        )

    def applies(self, view: PageView) -> bool:
        """Whether this family judges ``view``."""
        return self.enabled and view.domain in self.domains and (self.languages is None or view.lang in self.languages)


def page_view(doc: Document) -> PageView:
    """The view of a pipeline document (language and domain from its metadata)."""
    return PageView(
        text=doc.text,
        lang=doc.metadata.get("lang", "en"),
        domain=doc.metadata.get("domain", "general"),
        metadata=doc.metadata,
    )


class RuleFamily(BaseFilter):
    """A family of rules as a pipeline step; subclasses set ``family`` and implement :meth:`check`."""

    family = ""

    def __init__(self, config: FamilyConfig):
        super().__init__()
        self.config = config

    def check(self, view: PageView) -> str | None:
        """The first rule ``view`` breaks (without the family prefix), or None."""
        raise NotImplementedError

    def judge(self, view: PageView) -> str | None:
        """The prefixed drop reason, or None when the family passes the page or does not apply to it."""
        if not self.config.applies(view):
            return None
        rule = self.check(view)
        return f"{self.family}:{rule}" if rule else None

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        reason = self.judge(page_view(doc))
        return (False, reason) if reason else True
