"""The curation recipe: one YAML file, one dataclass per pipeline block, unknown keys rejected.

``recipes/data/*.yaml`` hold the sections below; ``hf-llama3 curate --config X.yaml --set a.b=value``
overrides any key (the value is parsed as YAML).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from data.dedup_line import LineDedupConfig
from data.dedup_minhash import MinHashConfig
from data.dedup_url import UrlDedupConfig
from data.domains import DomainConfig
from data.extract import ExtractConfig
from data.heuristics import HeuristicsConfig
from data.langid import LangIdConfig
from data.mix import MixConfig
from data.pii import PiiConfig
from data.quality import QualityConfig
from data.readers import ReaderConfig
from data.shards import ShardConfig
from data.topics import TopicConfig
from data.url_filter import UrlFilterConfig
from hf_llama3.recipe_loader import apply_overrides, bounds, build, read_yaml

EXECUTOR_KINDS = ("local", "slurm", "ray")


@dataclass
class ExecutorConfig:
    """Args:
    kind: the datatrove executor of every stage: ``local`` (processes on this machine), ``slurm`` or ``ray``.
    options: extra arguments for that executor (Slurm: ``partition``, ``time``, ``cpus_per_task``,
        ``mem_per_cpu_gb``, ``venv_path``, ...; Ray: ``cpus_per_task``, ...; local: ``start_method``).
    """

    kind: str = "local"
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in EXECUTOR_KINDS:
            raise ValueError(f"executor.kind must be one of {EXECUTOR_KINDS}, got {self.kind!r}.")
        if self.kind == "slurm" and not {"partition", "time"} <= set(self.options):
            raise ValueError("executor.kind=slurm needs executor.options.partition and executor.options.time.")


@dataclass
class CurateConfig:
    """The whole pipeline.

    Args:
        output_dir: where stage outputs, shards and the report go (a rerun resumes from what is there).
        workers: tasks run at once by the local executor.
        tasks: tasks of every stage that reads a share of the documents (dedup, quality, tokenize, pack): a task
            holds its share's dedup keys, never the corpus's documents. The kept documents do not depend on it; the
            shards do (each task packs its own), so it is part of the recipe.
        tokenizer: ``None`` for the Llama 3 tokenizer (``hf_llama3.load_tokenizer``), or a path it accepts.
    """

    output_dir: str
    reader: ReaderConfig
    workers: int = field(default=1, metadata=bounds("tasks run at once by the local executor", min=1))
    tasks: int = field(default=4, metadata=bounds("tasks of every sharded stage", min=1))
    tokenizer: str | None = None
    url_filter: UrlFilterConfig = field(default_factory=UrlFilterConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    domains: DomainConfig = field(default_factory=DomainConfig)
    langid: LangIdConfig = field(default_factory=LangIdConfig)
    pii: PiiConfig = field(default_factory=PiiConfig)
    heuristics: HeuristicsConfig = field(default_factory=HeuristicsConfig)
    url_dedup: UrlDedupConfig = field(default_factory=UrlDedupConfig)
    minhash: MinHashConfig = field(default_factory=MinHashConfig)
    line_dedup: LineDedupConfig = field(default_factory=LineDedupConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    topics: TopicConfig = field(default_factory=TopicConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)

    def __post_init__(self) -> None:
        if self.workers < 1 or self.tasks < 1:
            raise ValueError(f"workers and tasks must be >= 1, got {self.workers} and {self.tasks}.")
        if not self.output_dir:
            raise ValueError("output_dir is empty: say where the curated data goes.")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> CurateConfig:
    """Read a recipe YAML (relative input/output paths are taken from the current directory) and apply overrides.

    The shared recipe loader (:mod:`hf_llama3.recipe_loader`) checks every key and type with its dotted path.
    """
    if path is not None and not Path(path).is_file():
        raise FileNotFoundError(f"config {str(path)!r} not found (recipes live in recipes/data/).")
    values = read_yaml(path) if path is not None else {}
    apply_overrides(values, overrides or [])
    if "reader" not in values or "output_dir" not in values:
        raise ValueError(
            "the config needs `reader: {paths: [...]}` and `output_dir: ...` (see recipes/data/sample.yaml)."
        )
    return build(CurateConfig, values, source=str(path) if path is not None else "command line")
