"""Topic classification of prompts into coarse and fine buckets [4.2.3 "Topic classification"].

The paper fine-tunes Llama 3 8B into a topic classifier over coarse buckets ("mathematical reasoning") and fine
ones ("geometry and trigonometry"). Here the policy/judge model classifies zero-shot: the coarse bucket is the most
likely coarse name as its answer, then the fine bucket the most likely among that coarse bucket's fine names
(:class:`training.post_data.judge.LogLikelihoodJudge`). ``data/topics.py`` is the web-document counterpart
(embedding similarity to topic descriptions, [3.1.2]); prompts are classified by the judge the paper names.
"""

from __future__ import annotations

from training.post_data.judge import LogLikelihoodJudge

# Coarse bucket -> fine buckets; the paper names "mathematical reasoning" and "geometry and trigonometry" [4.2.3],
# the rest follow its capability sections [4.3.1-4.3.7].
DEFAULT_TOPICS: dict[str, list[str]] = {
    "mathematical reasoning": ["arithmetic", "algebra", "geometry and trigonometry", "probability and statistics"],
    "coding": ["writing code", "debugging", "explaining code", "code translation"],
    "multilinguality": ["translation", "non-English conversation"],
    "factual knowledge": ["science", "history", "geography", "health"],
    "creative writing": ["stories", "poems", "essays"],
    "tool use": ["search", "calculation", "data analysis"],
    "general chat": ["advice", "opinions", "small talk"],
}

_QUESTION = "Which topic does this request belong to? Answer with the topic name only.\n\nRequest:\n{prompt}"


def classify_topic(judge: LogLikelihoodJudge, prompt: str, topics: dict[str, list[str]]) -> dict[str, str]:
    """``{"coarse", "fine", "model"}`` of one prompt: the judge's most likely coarse then fine bucket."""
    question = _QUESTION.format(prompt=prompt)
    coarse_names = list(topics)
    coarse = coarse_names[int(judge.option_probabilities(question, coarse_names).argmax())]
    fine_names = topics[coarse]
    fine = fine_names[int(judge.option_probabilities(question, fine_names).argmax())] if fine_names else coarse
    return {"coarse": coarse, "fine": fine, "model": judge.name}
