"""PII detection and scrubbing [3.1.1: "filters designed to remove data from websites that are likely to
contain high volumes of personally identifiable information"].

Two actions per document: drop it when PII covers more than ``max_pii_char_ratio`` of its characters
(``pii_density``) or it holds more than ``max_pii_matches`` items (``pii_count``); otherwise replace each
item by a harmless stand-in of the same shape (reserved example domains, the 555-01xx phone range,
TEST-NET addresses), so the language model still sees well-formed text. The paper publishes no
thresholds: both are settings.

Detected: e-mail addresses, phone numbers (North American and international forms), IPv4 and IPv6
addresses, payment card numbers (Luhn-checked), US social security numbers, UK national insurance numbers
and IBANs (mod-97 checked).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

PATTERNS: dict[str, re.Pattern] = {
    "email": re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"),
    "iban": re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"),
    "card": re.compile(r"\b(?:\d[ -]?){12,18}\d\b"),
    "ssn": re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b"),
    "nino": re.compile(r"\b[A-CEGHJ-PR-TW-Z]{2} ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b"),
    "ipv4": re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b"),
    "ipv6": re.compile(r"\b(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}\b"),
    "phone": re.compile(
        r"(?<![\w.])(?<!\d[ -])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)|\d{2,4})[ .-]?\d{3,4}[ .-]?\d{3,4}(?!\w|[ .-]\d|\.\w)"
    ),
}
# Checked in this order; a span taken by an earlier kind is not matched again.
ORDER = ["email", "iban", "card", "ssn", "nino", "ipv4", "ipv6", "phone"]
REPLACEMENTS = {
    "email": "email@example.com",
    "iban": "GB00 XXXX 0000 0000 0000 00",
    "card": "0000 0000 0000 0000",
    "ssn": "000-00-0000",
    "nino": "AA 00 00 00 A",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "phone": "555-0100",
}


def luhn_ok(number: str) -> bool:
    digits = [int(c) for c in number if c.isdigit()]
    checksum = sum(digits[-1::-2]) + sum(sum(divmod(2 * d, 10)) for d in digits[-2::-2])
    return 13 <= len(digits) <= 19 and checksum % 10 == 0


def iban_ok(iban: str) -> bool:
    compact = iban.replace(" ", "")
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


_VALIDATORS = {"card": luhn_ok, "iban": iban_ok}


def _phone_like(text: str) -> bool:
    """At least 7 digits and some phone punctuation: a bare digit run (an id, a timestamp) is not a number to call."""
    return sum(c.isdigit() for c in text) >= 7 and any(c in " .-()+" for c in text)


def find_pii(text: str, kinds: list[str] | None = None) -> list[tuple[int, int, str]]:
    """Non-overlapping (start, end, kind) spans of PII in ``text``, sorted by start."""
    spans: list[tuple[int, int, str]] = []
    taken = bytearray(len(text))
    for kind in kinds or ORDER:
        for match in PATTERNS[kind].finditer(text):
            start, end = match.span()
            if any(taken[start:end]):
                continue
            if kind in _VALIDATORS and not _VALIDATORS[kind](match.group()):
                continue
            if kind == "phone" and not _phone_like(match.group()):
                continue
            spans.append((start, end, kind))
            taken[start:end] = b"\x01" * (end - start)
    return sorted(spans)


def scrub(text: str, spans: list[tuple[int, int, str]]) -> str:
    """``text`` with every span replaced by its kind's stand-in."""
    out, last = [], 0
    for start, end, kind in spans:
        out += [text[last:start], REPLACEMENTS[kind]]
        last = end
    return "".join([*out, text[last:]])


@dataclass
class PiiConfig:
    """PII settings (the paper gives no numbers).

    Args:
        kinds: which detectors run (default: all).
        max_pii_char_ratio: drop documents where PII covers more than this fraction of characters.
        max_pii_matches: drop documents with more PII items than this.
        scrub: replace the PII in kept documents.
    """

    kinds: list[str] = field(default_factory=lambda: list(ORDER))
    max_pii_char_ratio: float = 0.05
    max_pii_matches: int = 50
    scrub: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(PATTERNS)
        if unknown:
            raise ValueError(f"pii.kinds has unknown detectors {sorted(unknown)}; choose from {ORDER}.")
        if not 0 < self.max_pii_char_ratio <= 1:
            raise ValueError(f"pii.max_pii_char_ratio must be in (0, 1], got {self.max_pii_char_ratio}.")


class PiiFilter(BaseFilter):
    """Drops PII-dense documents (``pii_density``, ``pii_count``) and scrubs PII from the rest."""

    name = "🕵 pii"

    def __init__(self, config: PiiConfig | None = None):
        super().__init__()
        self.config = config or PiiConfig()

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        spans = find_pii(doc.text, self.config.kinds)
        if not spans:
            return True
        covered = sum(end - start for start, end, _ in spans)
        if covered / max(1, len(doc.text)) > self.config.max_pii_char_ratio:
            return False, "pii_density"
        if len(spans) > self.config.max_pii_matches:
            return False, "pii_count"
        if self.config.scrub:
            doc.text = scrub(doc.text, spans)
            for _, _, kind in spans:
                self.stat_update(f"scrubbed_{kind}")
        return True
