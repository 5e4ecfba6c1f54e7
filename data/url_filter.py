"""Unsafe-domain filtering by URL [3.1.1: "domains ... known to contain adult content"].

Uses the block lists datatrove bundles (``datatrove/assets/url_filterblacklistsv0_3_0.tar.gz``: about
4.6M adult domains, 20K URLs, banned words and sub-words) plus the user's own lists. The 4.6M domains (and 20K
URLs) are kept as sorted arrays of 64-bit BLAKE2 hashes, built once (about 6 s) and cached as ``.npy``, so a worker
loads them in milliseconds and 40 MB instead of a 500 MB Python set; a hash collision between two
domains has probability ~1e-12. A host matches if it or any parent domain is listed.

Drop reasons: ``blocked_domain``, ``blocked_url``, ``banned_url_word``, ``soft_banned_url_words``,
``banned_url_subword``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.utils._import_utils import ASSETS_PATH

from hf_llama3.checkpoint_io import atomic_output_file

logger = logging.getLogger(__name__)

BUNDLED_TAR = os.path.join(ASSETS_PATH, "url_filterblacklistsv0_3_0.tar.gz")
_SPLIT = re.compile(r"[^a-z0-9]+")


def default_cache_dir() -> str:
    return os.environ.get("HF_LLAMA3_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "hf_llama3"))


@dataclass
class UrlFilterConfig:
    """Which URL block lists apply.

    Args:
        use_bundled_lists: datatrove's bundled adult-domain/URL/word lists.
        extra_domains: more blocked domains (a listed domain blocks its subdomains too).
        extra_domain_files: text files with one blocked domain per line (``#`` comments allowed).
        extra_banned_words: words that block a URL when they appear as a URL token.
        soft_word_threshold: URLs with at least this many "soft" banned words are blocked (datatrove's 2).
        cache_dir: where the hashed domain list is cached.
    """

    use_bundled_lists: bool = True
    extra_domains: list[str] = field(default_factory=list)
    extra_domain_files: list[str] = field(default_factory=list)
    extra_banned_words: list[str] = field(default_factory=list)
    soft_word_threshold: int = 2
    cache_dir: str = field(default_factory=default_cache_dir)

    def __post_init__(self) -> None:
        if self.soft_word_threshold < 1:
            raise ValueError(f"url_filter.soft_word_threshold must be >= 1, got {self.soft_word_threshold}.")
        for path in self.extra_domain_files:
            if not Path(path).is_file():
                raise FileNotFoundError(f"url_filter.extra_domain_files: {path!r} does not exist.")


def _hash(domain: str | bytes) -> int:
    data = domain.encode() if isinstance(domain, str) else domain
    return int.from_bytes(hashlib.blake2b(data.strip().lower(), digest_size=8).digest(), "little")


def _read_lines(raw: bytes) -> list[str]:
    return [
        line.strip() for line in raw.decode("utf-8", "ignore").split("\n") if line.strip() and not line.startswith("#")
    ]


def bundled_hashes(cache_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted uint64 hashes of datatrove's bundled blocked domains and URLs.

    Built in one pass over the tarball (about 6 s) and cached as ``.npy``; later calls read the cache.
    """
    cache = Path(cache_dir)
    paths = {name: cache / f"url_blocklist_{name}_v0_3_0.npy" for name in ("domains", "urls")}
    if all(p.exists() for p in paths.values()):
        return np.load(paths["domains"]), np.load(paths["urls"])
    logger.info("hashing datatrove's bundled URL block lists into %s (once)", cache)
    arrays = {}
    with tarfile.open(BUNDLED_TAR, "r:gz") as tar:
        for member in tar:
            if member.name in paths:
                raw = tar.extractfile(member).read()
                lines = (line for line in raw.split(b"\n") if line.strip() and not line.startswith(b"#"))
                arrays[member.name] = np.sort(np.fromiter((_hash(line) for line in lines), dtype=np.uint64))
    cache.mkdir(parents=True, exist_ok=True)
    for name, path in paths.items():
        # A file object, so np.save does not append ".npy" to the temporary name.
        with atomic_output_file(path) as tmp, open(tmp, "wb") as f:
            np.save(f, arrays[name])
    return arrays["domains"], arrays["urls"]


def _contains(sorted_hashes: np.ndarray, values: np.ndarray) -> bool:
    if sorted_hashes.size == 0 or values.size == 0:
        return False
    pos = np.minimum(np.searchsorted(sorted_hashes, values), sorted_hashes.size - 1)
    return bool(np.any(sorted_hashes[pos] == values))


class UrlBlocklistFilter(BaseFilter):
    """Drops documents whose URL is on an adult/unsafe block list. Documents without a URL are kept."""

    name = "😈 url blocklist"

    def __init__(self, config: UrlFilterConfig | None = None):
        super().__init__()
        self.config = config or UrlFilterConfig()
        self._loaded = False

    def _load(self) -> None:
        cfg = self.config
        extra = list(cfg.extra_domains)
        for path in cfg.extra_domain_files:
            extra += _read_lines(Path(path).read_bytes())
        self._extra_domain_hashes = np.unique(np.array([_hash(d) for d in extra], dtype=np.uint64))
        self._domain_hashes = self._url_hashes = np.zeros(0, dtype=np.uint64)
        self.banned_words = {w.lower() for w in cfg.extra_banned_words}
        self.soft_words: set[str] = set()
        self.subwords: list[str] = []
        if cfg.use_bundled_lists:
            self._domain_hashes, self._url_hashes = bundled_hashes(cfg.cache_dir)
            assets = Path(ASSETS_PATH)
            self.banned_words |= {
                _SPLIT.sub("", w.lower()) for w in _read_lines((assets / "banned_words.txt").read_bytes())
            }
            self.soft_words = {
                _SPLIT.sub("", w.lower()) for w in _read_lines((assets / "soft_banned_words.txt").read_bytes())
            }
            self.subwords = sorted(
                {_SPLIT.sub("", w.lower()) for w in _read_lines((assets / "banned_subwords.txt").read_bytes())}
            )
        self._loaded = True

    def _domain_blocked(self, host: str) -> bool:
        labels = host.split(".")
        candidates = np.array([_hash(".".join(labels[i:])) for i in range(len(labels) - 1)], dtype=np.uint64)
        return _contains(self._domain_hashes, candidates) or _contains(self._extra_domain_hashes, candidates)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if not self._loaded:
            self._load()
        url = (doc.metadata.get("url") or "").strip()
        if not url or url.startswith("file:"):
            return True
        parts = urlsplit(url.lower())
        host = (parts.hostname or "").removeprefix("www.")
        if host and self._domain_blocked(host):
            return False, "blocked_domain"
        if _contains(
            self._url_hashes, np.array([_hash(url.split("://", 1)[-1].removeprefix("www."))], dtype=np.uint64)
        ):
            return False, "blocked_url"
        words = set(_SPLIT.split(url.lower()))
        if words & self.banned_words:
            return False, "banned_url_word"
        if len(words & self.soft_words) >= self.config.soft_word_threshold:
            return False, "soft_banned_url_words"
        squashed = _SPLIT.sub("", url.lower())
        if any(sub in squashed for sub in self.subwords):
            return False, "banned_url_subword"
        return True
