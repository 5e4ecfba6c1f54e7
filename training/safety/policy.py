"""The safety policy of a Llama Guard 3-style classifier [paper 5.4.7]: hazard categories as data.

Llama Guard 3 classifies against the 13 hazards of the MLCommons AI Safety taxonomy plus a 14th category for code
interpreter abuse (tool calls). Each category has a code (``S1`` ... ``S14``), the short name the prompt lists
(``S1: Violent Crimes.``) and a description (the hazard text of Meta's Llama Guard 3 model card, shown in the prompt
only with ``with_descriptions=True``). A policy may be a subset of the 14 (the codes keep their numbers, as Meta's
reference guardrail does when categories are excluded) or extend them with new codes (``S15`` ...).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_CODE = re.compile(r"^S([1-9][0-9]{0,2})$")


@dataclasses.dataclass(frozen=True)
class SafetyCategory:
    """One hazard category: ``code`` (``S<n>``), ``name`` as listed in the prompt, and its ``description``."""

    code: str
    name: str
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.code, str) or not _CODE.match(self.code):
            raise ValueError(
                f"Category code {self.code!r} is not of the form S<number> (S1 ... S999): name categories S1, S2, ..."
            )
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"Category {self.code} needs a non-empty name (the text after '{self.code}: ').")

    @property
    def number(self) -> int:
        """The number after ``S`` (the token the guard writes after ``S`` when it names the category)."""
        return int(self.code[1:])

    def prompt_line(self, with_description: bool = False) -> str:
        """``S1: Violent Crimes.`` (plus the description on the next line with ``with_description``)."""
        line = f"{self.code}: {self.name}."
        return f"{line}\n{self.description}" if with_description and self.description else line


# Llama Guard 3's hazard taxonomy [5.4.7]: prompt names as in Meta's Llama Guard 3 prompt format, descriptions from
# Meta's Llama Guard 3 model card (Hazard Taxonomy and Policy).
LLAMA_GUARD_3_CATEGORIES: tuple[SafetyCategory, ...] = (
    SafetyCategory(
        "S1",
        "Violent Crimes",
        "Responses that enable, encourage, or endorse the commission of violent crimes, including: (1) unlawful "
        "violence toward people (ex: terrorism, genocide, murder, hate-motivated violent crimes, child abuse, "
        "assault, battery, kidnapping) and (2) unlawful violence toward animals (ex: animal abuse)",
    ),
    SafetyCategory(
        "S2",
        "Non-Violent Crimes",
        "Responses that enable, encourage, or endorse the commission of non-violent crimes, including: (1) personal "
        "crimes (ex: labor trafficking, threats, intimidation, hate-motivated non-violent crimes), (2) financial "
        "crimes (ex: fraud, scams, money laundering), (3) property crimes (ex: theft, arson, vandalism), (4) drug "
        "crimes (ex: creating or using regulated substances), (5) weapons crimes (ex: producing unlicensed "
        "firearms), and (6) cyber crimes (ex: hacking)",
    ),
    SafetyCategory(
        "S3",
        "Sex Crimes",
        "Responses that enable, encourage, or endorse the commission of sex-related crimes, including: (1) sex "
        "trafficking, (2) sexual assault (ex: rape), (3) sexual harassment (physical, verbal, or visual), and "
        "(4) prostitution",
    ),
    SafetyCategory(
        "S4",
        "Child Exploitation",
        "Responses that contain, describe, enable, encourage, or endorse the sexual abuse of children",
    ),
    SafetyCategory(
        "S5",
        "Defamation",
        "Responses that are both verifiably false and likely to injure a living person's reputation",
    ),
    SafetyCategory(
        "S6",
        "Specialized Advice",
        "Responses that contain specialized financial, medical, or legal advice, or that indicate dangerous "
        "activities or objects are safe",
    ),
    SafetyCategory(
        "S7",
        "Privacy",
        "Responses that contain sensitive, nonpublic personal information that could undermine someone's physical, "
        "digital, or financial security",
    ),
    SafetyCategory(
        "S8",
        "Intellectual Property",
        "Responses that may violate the intellectual property rights of any third party",
    ),
    SafetyCategory(
        "S9",
        "Indiscriminate Weapons",
        "Responses that enable, encourage, or endorse the creation of indiscriminate weapons, including: (1) chemical "
        "weapons (ex: nerve gas), (2) biological weapons (ex: anthrax), (3) radiological weapons (ex: cobalt bombs), "
        "(4) nuclear weapons (ex: fission bombs), and (5) high-yield explosive weapons (ex: cluster munitions)",
    ),
    SafetyCategory(
        "S10",
        "Hate",
        "Responses that demean or dehumanize people on the basis of their sensitive, personal characteristics (i.e., "
        "race, color, ethnicity, national origin, disability, religious affiliation, caste, sexual orientation, sex, "
        "gender identity, and/or serious disease)",
    ),
    SafetyCategory(
        "S11",
        "Self-Harm",
        "Responses that enable, encourage, or endorse acts of intentional self-harm, including: (1) suicide, "
        "(2) self-injury (ex: cutting), and (3) disordered eating",
    ),
    SafetyCategory("S12", "Sexual Content", "Responses that contain erotica"),
    SafetyCategory(
        "S13",
        "Elections",
        "Responses that contain factually incorrect information about electoral systems and processes, including in "
        "the time, place, or manner of voting in civic elections",
    ),
    SafetyCategory(
        "S14",
        "Code Interpreter Abuse",
        "Responses that seek to abuse code interpreters, including those that enable denial of service attacks, "
        "container escapes or privilege escalation exploits",
    ),
)


@dataclasses.dataclass(frozen=True)
class SafetyPolicy:
    """An ordered set of hazard categories; the default is Llama Guard 3's 14 [5.4.7].

    Build one with :meth:`default`, :meth:`subset` (``SafetyPolicy.default().subset(["S1", "S9"])``),
    :meth:`extend` (add categories with new codes) or :meth:`from_config` (what ``guard.json`` stores).
    """

    categories: tuple[SafetyCategory, ...] = LLAMA_GUARD_3_CATEGORIES

    def __post_init__(self) -> None:
        object.__setattr__(self, "categories", tuple(self.categories))
        if not self.categories:
            raise ValueError("A safety policy needs at least one category (e.g. SafetyPolicy.default()).")
        seen: set[str] = set()
        for category in self.categories:
            if not isinstance(category, SafetyCategory):
                raise ValueError(f"Policy entries must be SafetyCategory objects, got {category!r}.")
            if category.code in seen:
                raise ValueError(f"Category code {category.code} appears twice in the policy; codes must be unique.")
            seen.add(category.code)

    @classmethod
    def default(cls) -> SafetyPolicy:
        """Llama Guard 3's 14 hazard categories, S1 ... S14."""
        return cls(LLAMA_GUARD_3_CATEGORIES)

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(c.code for c in self.categories)

    def __contains__(self, code: object) -> bool:
        return code in self.codes

    def __len__(self) -> int:
        return len(self.categories)

    def category(self, code: str) -> SafetyCategory:
        """The category with ``code``; an unknown code is a ValueError naming the valid ones."""
        for category in self.categories:
            if category.code == code:
                return category
        raise ValueError(f"Unknown category code {code!r}: this policy has {', '.join(self.codes)}.")

    def check_codes(self, codes: Iterable[str], where: str = "categories") -> list[str]:
        """Return ``codes`` as a list after checking that each one is in the policy."""
        codes = list(codes)
        unknown = [code for code in codes if code not in self.codes]
        if unknown:
            raise ValueError(
                f"{where}: unknown category code(s) {unknown}; this policy has {', '.join(self.codes)} "
                "(extend the policy with SafetyPolicy.extend to add categories)."
            )
        return codes

    def subset(self, codes: Sequence[str]) -> SafetyPolicy:
        """The categories named in ``codes`` (policy order kept; codes keep their numbers)."""
        wanted = set(self.check_codes(codes, "policy subset"))
        if not wanted:
            raise ValueError("A policy subset needs at least one category code, e.g. ['S1', 'S9'].")
        return SafetyPolicy(tuple(c for c in self.categories if c.code in wanted))

    def extend(self, categories: Iterable[SafetyCategory | Mapping[str, Any]]) -> SafetyPolicy:
        """This policy plus user-defined categories (their codes must be new)."""
        extra = tuple(c if isinstance(c, SafetyCategory) else SafetyCategory(**c) for c in categories)
        return SafetyPolicy(self.categories + extra)

    def prompt_block(self, with_descriptions: bool = False) -> str:
        """The lines between ``<BEGIN UNSAFE CONTENT CATEGORIES>`` and ``<END UNSAFE CONTENT CATEGORIES>``."""
        return "\n".join(c.prompt_line(with_descriptions) for c in self.categories)

    def to_config(self) -> list[dict[str, str]]:
        """JSON-ready list of ``{code, name, description}`` (what ``guard.json`` and the chat template take)."""
        return [dataclasses.asdict(c) for c in self.categories]

    @classmethod
    def from_config(cls, data: Sequence[Mapping[str, Any]] | None) -> SafetyPolicy:
        """Inverse of :meth:`to_config`; ``None`` gives the default policy."""
        if data is None:
            return cls.default()
        if not isinstance(data, Sequence) or isinstance(data, str):
            raise ValueError(f"A policy config is a list of {{code, name, description}} objects, got {data!r}.")
        return cls(tuple(SafetyCategory(**dict(item)) for item in data))
