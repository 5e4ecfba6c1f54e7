"""URL block lists (datatrove's bundled lists + user lists) and PII scrubbing: every drop reason and kept case."""

import pytest
from datatrove.data import Document

from data.pii import PiiConfig, PiiFilter, find_pii, iban_ok, luhn_ok, scrub
from data.url_filter import UrlBlocklistFilter, UrlFilterConfig


@pytest.fixture(scope="module")
def url_filter(tmp_path_factory):
    domains = tmp_path_factory.mktemp("lists") / "mine.txt"
    domains.write_text("# my list\nbad-corp.example\n")
    config = UrlFilterConfig(
        extra_domains=["blocked.example"], extra_domain_files=[str(domains)], extra_banned_words=["casino"]
    )
    return UrlBlocklistFilter(config)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://0-1avsex.com/videos/1", "blocked_domain"),  # in datatrove's bundled domain list
        ("http://www.0-1avsex.com/", "blocked_domain"),
        ("https://cdn.static.0-1avsex.com/a.jpg", "blocked_domain"),  # subdomain of a listed domain
        ("https://shop.blocked.example/x", "blocked_domain"),  # user list
        ("https://bad-corp.example/", "blocked_domain"),  # user list file
        (
            "https://0149614511.strimbat.fr/porno-anal-escort-granville-faire-sa-salope-baise-une-vache-video-gratuite-x-escort-girl-auxerre",
            "blocked_url",
        ),
        ("https://example.org/best-casino-bonus", "banned_url_word"),
        ("https://example.org/xxx/page", "banned_url_word"),
        ("https://example.org/erotic/babes/gallery", "soft_banned_url_words"),
        ("https://example.org/erotic-poetry-of-the-renaissance", None),  # one soft word is not enough
        ("https://example.org/bestbukkakevideos", "banned_url_subword"),
        ("https://docs.python.org/3/library/textwrap.html", None),
        ("https://en.wikipedia.org/wiki/Essex", None),  # "sex" inside a word is fine
        ("", None),  # no URL: kept
    ],
)
def test_url_reasons(url_filter, url, expected):
    result = url_filter.filter(Document(text="x", id="1", metadata={"url": url}))
    assert result == (True if expected is None else (False, expected))


def test_user_list_only_config_needs_no_bundled_lists(tmp_path):
    step = UrlBlocklistFilter(
        UrlFilterConfig(use_bundled_lists=False, extra_domains=["a.example"], cache_dir=str(tmp_path))
    )
    docs = [
        Document(text="x", id=str(i), metadata={"url": u})
        for i, u in enumerate(["http://a.example/", "http://0-1avsex.com/"])
    ]
    assert [d.id for d in step.run(docs)] == ["1"]
    with pytest.raises(FileNotFoundError, match="extra_domain_files"):
        UrlFilterConfig(extra_domain_files=[str(tmp_path / "missing.txt")])


TEXT = (
    "Contact john.doe@corp.com or call +1 (415) 555-2671 / 020 7946 0958. Server 10.0.0.12, "
    "v6 2001:0db8:85a3:0000:0000:8a2e:0370:7334. Card 4111 1111 1111 1111, not 4111 1111 1111 1112. "
    "SSN 123-45-6789. NI AB 12 34 56 C. IBAN GB82 WEST 1234 5698 7654 32."
)


def test_every_pii_kind_is_found_and_scrubbed():
    spans = find_pii(TEXT)
    found = {TEXT[a:b]: kind for a, b, kind in spans}
    assert found == {
        "john.doe@corp.com": "email",
        "+1 (415) 555-2671": "phone",
        "020 7946 0958": "phone",
        "10.0.0.12": "ipv4",
        "2001:0db8:85a3:0000:0000:8a2e:0370:7334": "ipv6",
        "4111 1111 1111 1111": "card",
        "123-45-6789": "ssn",
        "AB 12 34 56 C": "nino",
        "GB82 WEST 1234 5698 7654 32": "iban",
    }
    clean = scrub(TEXT, spans)
    assert "john.doe" not in clean and "4111 1111 1111 1111" not in clean and "email@example.com" in clean
    assert "4111 1111 1111 1112" in clean  # fails the Luhn check: not a card


def test_numbers_that_are_not_pii_stay():
    text = (
        "Python 3.11.7 was released on 2023-10-02; pi is 3.14159265 and a million is 1,000,000 in 2024. "
        "Run date --date='@2147483647' or odd_count(['3', \"11111111\"])."
    )
    assert find_pii(text) == []
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("GB82 WEST 1234 5698 7654 32") and not iban_ok("GB82 WEST 1234 5698 7654 33")


def test_pii_filter_drops_dense_documents_and_scrubs_the_rest():
    step = PiiFilter(PiiConfig(max_pii_char_ratio=0.05, max_pii_matches=3))
    prose = "The committee met on Tuesday to discuss the budget for the new library wing. " * 10
    kept = Document(text=prose + "Write to office@library.org for details.", id="kept")
    dense = Document(text="\n".join(f"user{i}@mail.com 10.0.{i}.1" for i in range(20)), id="dense")
    many = Document(text=prose * 3 + " ".join(f"a{i}@b.org" for i in range(5)), id="many")
    clean = Document(text=prose, id="clean")
    out = list(step.run([kept, dense, many, clean]))
    assert [d.id for d in out] == ["kept", "clean"]
    assert "office@library.org" not in out[0].text and "email@example.com" in out[0].text
    assert step.stats["dropped_pii_density"].total == 1
    assert step.stats["dropped_pii_count"].total == 1
    with pytest.raises(ValueError, match="unknown detectors"):
        PiiConfig(kinds=["dna"])
