"""Knowledge classification of web documents [3.1.2 "Knowledge classification"].

The paper classifies web data by the kind of information it holds and downsamples categories that are
over-represented on the web (arts and entertainment, for example). Here a zero-shot classifier does it:
the offline MiniLM sentence encoder embeds each document and a short description of every topic, and the
document takes the most similar topic (``metadata["topic"]``). ``mix.topic_keep`` then downsamples
topics. The topic list is a setting; the default follows common web-taxonomy top levels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from datatrove.data import Document

DEFAULT_TOPICS = {
    "arts_entertainment": "movies, music, celebrities, television shows, games, fiction and entertainment news",
    "science_math": "mathematics and science: proofs, theorems, equations, sequences, algebra, calculus, physics, chemistry, biology",
    "computing": "computer programming, software, source code, APIs, libraries, operating systems and the internet",
    "health": "health, medicine, diseases, nutrition, fitness and medical treatment",
    "business_finance": "business, finance, money, markets, companies, products, shopping and advertising",
    "society_politics": "politics, government, law, history, society, religion and news",
    "education_reference": "education, encyclopedias, dictionaries, how-to guides and reference material",
    "sports": "sports, athletes, teams, matches, tournaments and results",
}


@dataclass
class TopicConfig:
    """Args:
    enabled: run the topic classifier (it needs the MiniLM encoder; off, documents get no topic).
    topics: topic name -> a description the encoder compares documents with.
    max_chars: only the start of each document is embedded.
    """

    enabled: bool = False
    topics: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TOPICS))
    max_chars: int = 1000

    def __post_init__(self) -> None:
        if len(self.topics) < 2:
            raise ValueError("topics.topics needs at least two topics to choose between.")


class TopicClassifier:
    """Zero-shot topic of each text by cosine similarity to the topic descriptions."""

    def __init__(self, config: TopicConfig | None = None, encoder_path: str | None = None):
        from sentence_transformers import SentenceTransformer

        from data.quality import default_encoder_path

        self.config = config or TopicConfig()
        self.names = list(self.config.topics)
        self.encoder = SentenceTransformer(encoder_path or default_encoder_path(), device="cpu")
        self.topic_vectors = self._embed(list(self.config.topics.values()))

    def _embed(self, texts: list[str]) -> np.ndarray:
        return self.encoder.encode(texts, batch_size=32, show_progress_bar=False, normalize_embeddings=True)

    def classify(self, texts: list[str]) -> list[str]:
        scores = self._embed([t[: self.config.max_chars] for t in texts]) @ self.topic_vectors.T
        return [self.names[i] for i in scores.argmax(axis=1)]

    def tag(self, docs: list[Document]) -> None:
        """Set ``metadata["topic"]`` on every document."""
        for doc, topic in zip(docs, self.classify([d.text for d in docs])):
            doc.metadata["topic"] = topic
