"""Language ID with the real lid.176 model, and domain tagging (code / math / general)."""

import pytest
from datatrove.data import Document

from data.domains import DomainConfig, DomainTagger, detect_domain
from data.langid import LangIdConfig, LanguageFilter, LanguageIdentifier, bundled_model_path

ENGLISH = "The committee met on Tuesday to discuss the budget for the new library wing and its opening hours."
GERMAN = "Der Ausschuss traf sich am Dienstag, um das Budget für den neuen Flügel der Bibliothek zu besprechen."
JAPANESE = "委員会は火曜日に集まり、図書館の新しい棟の予算と開館時間について話し合いました。"
CODE = "def area(radius):\n    return 3.14159 * radius ** 2\n\nfor r in range(3):\n    print(area(r))\n"


def test_lid176_ships_offline_and_predicts_176_way():
    assert bundled_model_path().endswith("lid.176.ftz")
    identifier = LanguageIdentifier()
    assert len(identifier.model.get_labels()) == 176
    assert identifier.predict(ENGLISH)[0] == "en"
    assert identifier.predict(GERMAN)[0] == "de"
    assert identifier.predict(JAPANESE)[0] == "ja"


def test_language_filter_reasons_and_kept_cases():
    step = LanguageFilter(LangIdConfig(languages=["en", "ja"], per_language_min_score={"ja": 0.99999}))
    docs = [
        Document(text=ENGLISH, id="en"),
        Document(text=GERMAN, id="de"),
        Document(text="zxq vbn kjh", id="noise"),
        Document(text=JAPANESE, id="ja"),
        Document(text=CODE, id="code", metadata={"domain": "code"}),
    ]
    out = list(step.run(docs))
    assert [d.id for d in out] == ["en", "code"]
    assert out[0].metadata["lang"] == "en" and out[0].metadata["lang_score"] > 0.65
    assert step.stats["dropped_language_not_allowed"].total == 1
    assert step.stats["dropped_low_language_score"].total == 2  # noise (default 0.65) and ja (its own threshold)


def test_bad_langid_config():
    with pytest.raises(ValueError, match="must be in"):
        LangIdConfig(min_score=2.0)
    with pytest.raises(FileNotFoundError, match="model_path"):
        LangIdConfig(model_path="/nonexistent/lid.bin")


def test_domain_tagging():
    assert detect_domain(CODE, {}) == "code"
    assert detect_domain("Intro text.\n" + CODE, {"code_chars": len(CODE)}) == "code"
    assert detect_domain(ENGLISH, {"code_chars": 0}) == "general"
    tex = r"Since $a^2 + b^2 = c^2$ we get $\frac{a}{c}$ and $\sqrt{2}$ in the limit."
    assert detect_domain(tex, {}) == "math"
    assert detect_domain(ENGLISH, {"math": 3}) == "math"
    step = DomainTagger(DomainConfig())
    out = list(step.run([Document(text=CODE, id="c"), Document(text=ENGLISH, id="e")]))
    assert [d.metadata["domain"] for d in out] == ["code", "general"]
    with pytest.raises(ValueError, match="min_code_fraction"):
        DomainConfig(min_code_fraction=0)
