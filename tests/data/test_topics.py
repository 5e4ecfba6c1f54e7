"""Zero-shot knowledge classification with the offline MiniLM encoder, and topic downsampling in the mix."""

import pytest
from datatrove.data import Document

from data.pipeline import _topic_kept
from data.topics import TopicClassifier, TopicConfig

TEXTS = {
    "arts_entertainment": "The band's new album topped the charts, and the lead singer announced a world tour with concerts in twelve cities.",
    "sports": "The striker scored twice in the second half as the home team won the championship final three goals to one.",
    "computing": "Install the package with pip, import the module and call the function; it returns a list of parsed JSON objects.",
    "health": "Doctors recommend regular exercise and a balanced diet to lower blood pressure and the risk of heart disease.",
    "science_math": "The proof shows that every bounded monotone sequence of real numbers converges, using the completeness axiom.",
}


def test_topics_of_plain_examples():
    classifier = TopicClassifier(TopicConfig(enabled=True))
    assert classifier.classify(list(TEXTS.values())) == list(TEXTS)
    docs = [Document(text=t, id=k) for k, t in TEXTS.items()]
    classifier.tag(docs)
    assert [d.metadata["topic"] for d in docs] == list(TEXTS)
    with pytest.raises(ValueError, match="two topics"):
        TopicConfig(topics={"only": "one"})


def test_topic_downsampling_keeps_the_configured_share_deterministically():
    docs = [
        Document(text="x", id=f"doc-{i}", metadata={"topic": "arts_entertainment" if i % 2 else "science_math"})
        for i in range(4000)
    ]
    keep = {"arts_entertainment": 0.25}
    kept = [d for d in docs if _topic_kept(d, keep)]
    arts = sum(d.metadata["topic"] == "arts_entertainment" for d in kept)
    assert abs(arts / 2000 - 0.25) < 0.03
    assert sum(d.metadata["topic"] == "science_math" for d in kept) == 2000
    assert [d.id for d in kept] == [d.id for d in docs if _topic_kept(d, keep)]
