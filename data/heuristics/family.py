"""One rule family as one datatrove filter step, gated by domain and language.

A family runs on a document when it is enabled, the document's domain (``metadata["domain"]``, set by
:class:`data.domains.DomainTagger`) is in ``domains`` and its language (``metadata["lang"]``) is in
``languages`` (``None``: every language). The first rule it breaks is the drop reason, prefixed with the
family's name (``gopher_repetition:dup_line_ratio``) so the report says which family dropped what.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

from data.heuristics.view import PageView

DOMAINS = ("general", "code", "math")


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
    domains: list[str] = field(default_factory=lambda: list(DOMAINS))
    languages: list[str] | None = None
    code_page_min_lines_ratio: float = 0.05

    def __post_init__(self) -> None:
        unknown = sorted(set(self.domains) - set(DOMAINS))
        if unknown:
            raise ValueError(f"heuristics domains {unknown} unknown: use any of {list(DOMAINS)}.")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_ratio") and isinstance(value, float) and not 0.0 <= value <= 1.0:
                raise ValueError(f"heuristics {type(self).__name__}.{f.name} must be in [0, 1], got {value}.")

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
