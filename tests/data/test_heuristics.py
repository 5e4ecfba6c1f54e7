"""Heuristic filters: one literal document per family and rule, kept documents of each domain, the gates."""

import functools
import random

import pytest
import wordfreq

from data.heuristics import (
    HeuristicFilter,
    HeuristicsConfig,
    check_document,
    dup_ngram_char_ratio,
    heuristic_filters,
    reference_frequencies,
    token_kl,
)
from data.heuristics.fineweb import FineWebConfig
from data.heuristics.gopher import RepetitionLimits
from hf_llama3.recipe_loader import build

PROSE = (
    "The river that runs through the old town was once the main road for merchants who carried salt, "
    "wool and timber to the coast. Over the centuries the banks were raised with stone, and small bridges "
    "were built so that farmers could bring their animals to the weekly market. Today most of the trade has "
    "moved to the highway, but visitors still walk along the water in the evening, and the museum near the "
    "harbour keeps the ledgers of the families that worked there for generations. Children learn to fish "
    "from the lower steps, while their grandparents talk about floods that reached the church doors."
)
CODE = '''def merge(left, right):
    """Merge two sorted lists into one sorted list."""
    result = []
    i = j = 0
    while i < len(left) and j < len(right):
        if left[i] <= right[j]:
            result.append(left[i])
            i += 1
        else:
            result.append(right[j])
            j += 1
    result.extend(left[i:])
    result.extend(right[j:])
    return result
'''
CONFIG = HeuristicsConfig()


@functools.lru_cache
def _common(min_len: int, max_len: int) -> list[str]:
    return [w for w in wordfreq.top_n_list("en", 5000) if w.isalpha() and min_len <= len(w) <= max_len]


def varied(n: int, seed: int, min_len: int = 1, max_len: int = 30) -> str:
    """``n`` distinct common English words (no repeated n-grams), drawn from wordfreq's top list."""
    words = _common(min_len, max_len)
    return " ".join(random.Random(seed).sample(words, n))


def _outliers(n: int) -> str:
    rng = random.Random(0)
    return " ".join("".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(rng.randint(4, 9))) for _ in range(n))


def _log(n: int) -> str:
    return "\n".join(
        f"2024-05-0{i % 9 + 1} 10:{i:02d}:17 WARN [pool-{i % 7}] request {i * 37} timed out" for i in range(n)
    )


CASES = {
    "gopher_repetition:dup_line_ratio": "\n".join(["ERROR worker-3 connection refused"] * 8 + [PROSE]),
    "gopher_repetition:dup_line_char_ratio": "\n".join(
        [PROSE] + [PROSE[:200]] * 3 + [f"line number {i} is unique here." for i in range(8)]
    ),
    "gopher_repetition:dup_para_ratio": "\n\n".join([PROSE[:300], PROSE[:300], PROSE[:300], PROSE]),
    "gopher_repetition:dup_para_char_ratio": "\n\n".join([PROSE, PROSE[:300], PROSE[:300], varied(40, 9) + "."]),
    "gopher_repetition:top_ngram_ratio": PROSE + " " + "click here " * 40,
    "gopher_repetition:dup_ngram_coverage": PROSE + " " + PROSE,
    "gopher_quality:too_few_words": "The river runs through the old town and the market is on Monday.",
    "gopher_quality:too_many_words": PROSE,  # with max_words lowered below
    "gopher_quality:mean_word_length": varied(80, 1, min_len=11) + " the and with.",
    "gopher_quality:symbol_word_ratio": PROSE + " " + " ".join(f"#tag{i}" for i in range(20)),
    "gopher_quality:bullet_lines": PROSE + "\n" + "\n".join(f"• {varied(8, i)}." for i in range(30)),
    "gopher_quality:ellipsis_lines": "\n".join(f"{s.strip()}..." for s in PROSE.split(",")),
    "gopher_quality:alpha_words_ratio": PROSE + " " + " ".join(str(i * 7919 % 1000) for i in range(60)),
    "gopher_quality:few_stop_words": " ".join(
        w
        for w in PROSE.split()
        if w.lower().strip(",.") not in {"the", "be", "to", "of", "and", "that", "have", "with"}
    ),
    "c4:lorem_ipsum": PROSE + " Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
    "c4:curly_bracket": PROSE + " Pass {a: 1} here.",  # with the rule switched on below
    "fineweb:punct_lines_ratio": "\n".join(PROSE.replace(".", "").replace(",", "").split(" the ")),
    "fineweb:short_lines_ratio": PROSE + "\n" + "\n".join(f"{varied(2, i, max_len=9)}." for i in range(30)),
    "fineweb:dup_line_char_ratio": "\n".join([PROSE, PROSE[:120], PROSE[:120], varied(12, 5) + "."]),
    "fineweb:newline_word_ratio": "\n".join(f"{varied(3, i, min_len=9, max_len=10)}." for i in range(40)),
    "llama3:repeated_lines": PROSE + "\n" + _log(60),  # with the other repetition rules off below
    "llama3:dirty_words": PROSE + " Hot fuck videos, free porn, sluts, fuck fuck and more porn here.",
    "llama3:token_kl": PROSE[:250] + " " + _outliers(150) + ".",
}
OVERRIDES = {
    "gopher_quality:too_many_words": {"gopher_quality": {"max_words": 60}},
    "gopher_repetition:dup_line_char_ratio": {"gopher_repetition": {"limits": {"max_dup_line_ratio": None}}},
    "gopher_repetition:dup_para_char_ratio": {"gopher_repetition": {"limits": {"max_dup_para_ratio": None}}},
    "c4:curly_bracket": {"c4": {"curly_bracket": True}},
    "fineweb:newline_word_ratio": {"gopher_quality": {"min_stop_words": None}},
    "fineweb:dup_line_char_ratio": {"gopher_repetition": {"enabled": False}},
    "llama3:repeated_lines": {f: {"enabled": False} for f in ("gopher_repetition", "gopher_quality", "fineweb")},
}


def config(**sections) -> HeuristicsConfig:
    """A config built by the recipe loader, as ``heuristics:`` in a recipe would be."""
    return build(HeuristicsConfig, sections, source="test")


@pytest.mark.parametrize("reason", sorted(CASES))
def test_each_drop_reason_on_a_literal_document(reason):
    assert check_document(CASES[reason], config(**OVERRIDES.get(reason, {}))) == reason


@pytest.mark.parametrize(
    ("text", "lang", "domain"),
    [
        (PROSE, "en", "general"),
        (CODE, "en", "code"),
        (PROSE + r" We have $\frac{a}{b} = \sum_i x_i^{2}$ here.", "en", "math"),
    ],
)
def test_kept_documents(text, lang, domain):
    assert check_document(text, CONFIG, lang=lang, domain=domain) is None


def test_code_is_judged_by_repetition_only():
    assert check_document(CODE, CONFIG, domain="general") is not None  # prose rules would drop it
    assert check_document(CODE, CONFIG, domain="code") is None
    assert check_document(CODE * 5, CONFIG, domain="code") == "llama3:repeated_lines"


def test_code_blocks_of_a_documentation_page_are_not_prose():
    # An API page: every method's example repeats the same calls; extraction marks the <pre> lines.
    example = "const buf = Buffer.alloc(10);\nconsole.log(buf.toString('hex'));\nbuf.fill(0);"
    parts, ranges = [], []
    for i in range(6):
        parts += [f"{varied(45, 20 + i)} of the {varied(10, 40 + i)} and returns a new buffer with it.", example]
        ranges.append([6 * i + 2, 6 * i + 5])
    page = "\n\n".join(parts)
    assert check_document(page, CONFIG, metadata={"code_lines": ranges}) is None
    assert check_document(page, CONFIG).startswith("gopher_repetition:")  # the same page judged as all prose
    log_page = PROSE + "\n\n" + _log(60)
    assert check_document(log_page, CONFIG, metadata={"code_lines": [[2, 62]]}) == "llama3:repeated_lines"


def test_math_markup_is_not_counted_as_symbols_or_non_words():
    formulas = " ".join(f"$x_{{{i}}} = {i}$" for i in range(40))
    page = PROSE + " Then " + formulas + " as required."
    assert check_document(page, CONFIG) is None
    assert check_document(page.replace("$", ""), CONFIG) == "gopher_quality:alpha_words_ratio"


def test_families_are_gated_by_domain_and_language():
    short = CASES["gopher_quality:too_few_words"]
    assert check_document(short, config(gopher_quality={"languages": ["de"]})) is None
    assert check_document(short, config(gopher_quality={"domains": ["code"]})) is None
    assert check_document(short, config(gopher_quality={"domains": ["general"]})) == "gopher_quality:too_few_words"
    with pytest.raises(ValueError, match=r"fineweb.domains\[0\]: expected one of"):
        config(fineweb={"domains": ["recipes"]})


def test_one_step_per_family_drops_what_the_single_step_drops():
    from datatrove.data import Document

    texts = {reason: text for reason, text in CASES.items() if reason not in OVERRIDES}
    texts["ok"] = PROSE
    single = HeuristicFilter()
    kept_single = [d.id for d in single.run([Document(text=t, id=i) for i, t in texts.items()])]
    data = iter([Document(text=t, id=i) for i, t in texts.items()])
    steps = heuristic_filters()
    for step in steps:
        data = step.run(data)
    assert [d.id for d in data] == kept_single == ["ok"]
    for step in steps:  # each step counts its own family's reasons, the ones the single step gives
        for key in step.stats.stats:
            if key.startswith("dropped_"):
                assert key.startswith(f"dropped_{step.family}:") and single.stats[key].total == step.stats[key].total


def test_german_and_japanese_documents_use_language_specific_rules():
    german = (
        "Der Fluss, der durch die Altstadt fließt, war einst die wichtigste Straße der Händler, die Salz, Wolle "
        "und Holz an die Küste brachten. Im Laufe der Jahrhunderte wurden die Ufer mit Steinen erhöht, und kleine "
        "Brücken wurden gebaut, damit die Bauern ihre Tiere zum wöchentlichen Markt bringen konnten. Heute ist der "
        "Handel größtenteils auf die Autobahn umgezogen, aber Besucher gehen am Abend noch immer am Wasser entlang."
    )
    assert check_document(german, CONFIG, lang="de") is None  # no English stop-word rule
    japanese = (
        "川は古い町を流れ、かつては商人が塩や羊毛を海岸へ運ぶ主要な道でした。今では多くの人が夕方に川沿いを歩きます。"
    )
    assert check_document(japanese, CONFIG, lang="ja") is None  # no word-count rules without spaces


def test_kl_uses_wordfreq_and_any_corpus_reference():
    english = reference_frequencies("en")
    words = PROSE.lower().replace(",", "").replace(".", "").split()
    assert token_kl(words, english) < 6.0 < token_kl(_outliers(80).split(), english)
    corpus = {"merchants": 0.5, "salt": 0.5}
    assert token_kl(["merchants", "salt"], corpus) == pytest.approx(0.0)


def test_kl_against_a_corpus_reference_file(tmp_path):
    import json
    from collections import Counter

    from datatrove.data import Document

    counts = Counter(PROSE.lower().replace(",", "").replace(".", "").split())
    (tmp_path / "ref.json").write_text(json.dumps(counts))
    step = HeuristicFilter(config(llama3={"kl_reference": str(tmp_path / "ref.json"), "max_token_kl": 1.0}))
    assert step.filter(Document(text=PROSE, id="same")) is True  # KL 0 against its own distribution
    off_corpus = PROSE + " " + varied(150, 3) + "."  # common English, but not this corpus's words
    assert check_document(off_corpus, HeuristicsConfig()) is None  # fine against wordfreq's English
    assert step.filter(Document(text=off_corpus, id="x")) == (False, "llama3:token_kl")
    with pytest.raises(FileNotFoundError, match="kl_reference"):
        config(llama3={"kl_reference": str(tmp_path / "missing.json")})


def test_dup_ngram_ratio_matches_a_hand_count():
    # "a b c a b c": the second "a b c" repeats the first 3-gram, so 3 of 6 equal-length words are covered.
    assert dup_ngram_char_ratio(["a", "b", "c", "a", "b", "c"], 3) == pytest.approx(0.5)


def test_filter_step_counts_reasons():
    step = HeuristicFilter()
    from datatrove.data import Document

    docs = [Document(text=PROSE, id="ok"), Document(text=CASES["c4:lorem_ipsum"], id="bad")]
    assert [d.id for d in step.run(docs)] == ["ok"]
    assert step.stats["dropped_c4:lorem_ipsum"].total == 1
    with pytest.raises(ValueError, match="must be in"):
        RepetitionLimits(max_dup_line_ratio=1.5)
    with pytest.raises(ValueError, match="must be in"):
        FineWebConfig(min_punct_lines_ratio=1.5)
