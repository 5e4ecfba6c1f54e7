"""Quality classifiers: fastText trained on real prose vs spam, an LLM judge (our model) labelling with a
rubric, and the offline MiniLM encoder classifier trained on labels; the filter's drop reasons."""

import inspect
import random

import numpy as np
import pytest
import torch
from datatrove.data import Document

from data.quality import (
    DEFAULT_RUBRIC,
    JUDGE_LABELS,
    EncoderClassifier,
    QualityConfig,
    QualityFilter,
    judge_labels,
    train_fasttext_classifier,
)

MODULES = ["textwrap", "json", "collections", "itertools", "functools", "os", "re", "shutil", "string", "heapq", "bisect", "difflib", "random", "statistics", "calendar", "inspect", "pathlib"]  # fmt: skip
PRODUCTS = ["watches", "shoes", "pills", "loans", "casino chips", "phones", "bags", "sunglasses", "jerseys", "tickets"]
SPAM = [
    "BUY CHEAP {p} ONLINE!!! best price guaranteed, free shipping, click here now >>> limited offer",
    "Home | Shop | {p} | Deals | Contact | Login | Cart (0) | Wishlist | Sitemap | Privacy",
    "{p} {p} discount {p} sale {p} outlet cheap {p} best {p} 2023 {p} online store",
    "We use cookies. Accept all cookies to continue. Subscribe to our newsletter for {p} deals!",
    "Top 10 {p} you won't believe!!! Number 7 will shock you. Click to see more {p} >>",
]


def prose_docs() -> list[str]:
    """Real explanatory prose: the docstrings of public stdlib functions and classes."""
    texts = []
    for name in MODULES:
        module = __import__(name)
        for attr in sorted(dir(module)):
            doc = inspect.getdoc(getattr(module, attr, None)) if not attr.startswith("_") else None
            if doc and len(doc) > 200 and doc not in texts:
                texts.append(doc)
    return texts


def spam_docs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(SPAM).format(p=rng.choice(PRODUCTS)) for _ in range(rng.randint(2, 6))) for _ in range(n)
    ]


@pytest.fixture(scope="module")
def split():
    prose, spam = prose_docs(), spam_docs(300)
    random.Random(1).shuffle(prose)
    cut = len(prose) * 3 // 4
    return (prose[:cut], spam[:200]), (prose[cut:], spam[200:])


def test_fasttext_classifier_separates_held_out_prose_from_spam(split, tmp_path):
    (pos, neg), (test_pos, test_neg) = split
    path = train_fasttext_classifier(pos, neg, tmp_path / "wiki_like.bin")
    step = QualityFilter(QualityConfig(fasttext_model=path, fasttext_threshold=0.5))
    docs = [Document(text=t, id=f"p{i}") for i, t in enumerate(test_pos)] + [
        Document(text=t, id=f"s{i}") for i, t in enumerate(test_neg)
    ]
    kept = {d.id for d in step.run(docs)}
    recall = sum(f"p{i}" in kept for i in range(len(test_pos))) / len(test_pos)
    leaked = sum(f"s{i}" in kept for i in range(len(test_neg))) / len(test_neg)
    assert recall > 0.9 and leaked < 0.05, (recall, leaked)
    assert step.stats["dropped_low_fasttext_quality"].total >= 0.95 * len(test_neg)
    code = Document(text="def f(): pass", id="c", metadata={"domain": "code"})
    assert step.filter(code) is True  # only general-domain documents are judged by default


def test_llm_judge_follows_the_model_preference():
    from hf_llama3 import Llama3Config, Llama3ForCausalLM, load_tokenizer

    tokenizer = load_tokenizer()
    torch.manual_seed(0)
    model = Llama3ForCausalLM(Llama3Config.from_preset("tiny"))
    no_id, yes_id = (tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in JUDGE_LABELS)
    texts = prose_docs()[:6] + spam_docs(6)
    hidden = []
    for text in texts:  # the judge's last hidden state on each rubric prompt (independent of lm_head)
        ids = tokenizer(DEFAULT_RUBRIC.format(text=text[:2000]), return_tensors="pt")["input_ids"]
        with torch.no_grad():
            hidden.append(model(input_ids=ids, output_hidden_states=True, logits_to_keep=1).hidden_states[-1][0, -1])
    hidden = torch.stack(hidden)
    direction = hidden[0] - hidden.mean(0)
    with torch.no_grad():  # make "yes" vs "no" a clean linear decision along one direction
        model.lm_head.weight[yes_id] = direction
        model.lm_head.weight[no_id] = -direction
    expected = (hidden @ direction > 0).int().tolist()
    labels = judge_labels(texts, model, tokenizer)
    assert labels == expected
    assert set(labels) == {0, 1}


def test_encoder_classifier_on_judge_labels_and_filter(split, tmp_path):
    (pos, neg), (test_pos, test_neg) = split
    texts = [t[:400] for t in pos[:30] + neg[:30]]
    labels = [1] * 30 + [0] * 30  # what a rubric judge gives prose and spam
    classifier = EncoderClassifier().fit(texts, labels)
    probs = classifier.predict_proba([t[:400] for t in test_pos[:10] + test_neg[:10]])
    accuracy = ((probs[:10] > 0.5).sum() + (probs[10:] <= 0.5).sum()) / 20
    assert accuracy >= 0.95
    classifier.save(tmp_path / "enc")
    reloaded = EncoderClassifier.load(tmp_path / "enc")
    assert np.allclose(reloaded.predict_proba([t[:400] for t in test_pos[:3]]), probs[:3], atol=1e-6)
    step = QualityFilter(QualityConfig(encoder_classifier=str(tmp_path / "enc")))
    out = list(step.run([Document(text=test_pos[0], id="good"), Document(text=test_neg[0], id="spam")]))
    assert [d.id for d in out] == ["good"] and "encoder_quality" in out[0].metadata
    assert step.stats["dropped_low_encoder_quality"].total == 1
    # A domain-specific classifier (the paper's code/math classifiers) judges only its domain.
    step = QualityFilter(QualityConfig(domain_encoders={"code": str(tmp_path / "enc")}, domains=[]))
    code_docs = [
        Document(text=t, id=i, metadata={"domain": "code"}) for t, i in ((test_pos[0], "good"), (test_neg[0], "bad"))
    ]
    general = Document(text=test_neg[0], id="general-spam", metadata={"domain": "general"})
    assert [d.id for d in step.run([*code_docs, general])] == ["good", "general-spam"]
    assert step.stats["dropped_low_code_quality"].total == 1
    with pytest.raises(ValueError, match="both classes"):
        EncoderClassifier.fit(classifier, texts[:3], [1, 1, 1])
    with pytest.raises(FileNotFoundError, match="train it first"):
        QualityConfig(fasttext_model=str(tmp_path / "nope.bin"))


def test_train_quality_cli(split, tmp_path):
    """Both trainers from the command line, on JSONL files; the judge is one of our checkpoints."""
    import json

    from hf_llama3 import Llama3Config, Llama3ForCausalLM, load_tokenizer
    from hf_llama3.cli import main as cli_main

    (pos, neg), _ = split

    def write(name, texts):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"text": t, "id": str(i)}) + "\n" for i, t in enumerate(texts)))
        return str(path)

    positives, negatives = write("pos.jsonl", pos), write("neg.jsonl", neg)
    assert (
        cli_main(
            [
                "train-quality",
                "fasttext",
                "--positives",
                positives,
                "--negatives",
                negatives,
                "--output",
                str(tmp_path / "ft.bin"),
            ]
        )
        == 0
    )
    assert QualityConfig(fasttext_model=str(tmp_path / "ft.bin")).fasttext_model

    tokenizer = load_tokenizer()
    torch.manual_seed(0)
    judge = Llama3ForCausalLM(Llama3Config.from_preset("tiny"))
    no_id, yes_id = (tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in JUDGE_LABELS)
    with torch.no_grad():  # a judge whose yes/no margin is the first hidden unit: it gives both labels
        judge.lm_head.weight.zero_()
        judge.lm_head.weight[yes_id, 0], judge.lm_head.weight[no_id, 0] = 1.0, -1.0
    judge.save_pretrained(tmp_path / "judge")
    mixed = write("mixed.jsonl", [t[:300] for t in pos[:15] + neg[:15]])
    rubric = tmp_path / "rubric.txt"
    rubric.write_text("Is this page worth learning from? {text}")  # the page's last token decides
    args = ["train-quality", "encoder", "--input", mixed, "--judge", str(tmp_path / "judge"), "--rubric", str(rubric)]
    assert cli_main([*args, "--output", str(tmp_path / "enc")]) == 0
    step = QualityFilter(QualityConfig(encoder_classifier=str(tmp_path / "enc"), encoder_threshold=0.0))
    assert step.filter(Document(text=pos[0], id="x")) is True
    assert (
        cli_main(["train-quality", "encoder", "--input", mixed, "--judge", str(tmp_path / "nope"), "--output", "x"])
        == 2
    )
