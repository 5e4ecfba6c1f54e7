"""Post-training data steps inside a round [4.1.6, 4.2.3, 4.3]: the ``post_data:`` list of the rounds recipe.

The paper curates and extends each round's SFT data before fine-tuning: rejection samples are quality-filtered and
deduplicated [4.2.3], long-context [4.3.4], tool-use [4.3.5] and code [4.3.1] rows are mixed in. Each of those is an
``hf-llama3 post-data <step>`` (:mod:`training.post_data.cli`) reading and writing SFT rows from its own recipe; here
a round runs them between rejection sampling and SFT with the inputs and outputs wired by the round::

    post_data:
      - {step: curate, when: after_rejection_sampling, config: recipes/tiny/curate.yaml,
         overrides: {judge_model_path: "{policy}", reward_model_path: "{reward_model}"}}
      - step: long-context
        config: {documents_path: docs.jsonl, model_path: "{policy}", mix_ratio: 0.001}

- ``when: after_rejection_sampling`` steps see the round's rejection samples alone (``rejection_sampling/sft.jsonl``);
  then the user's ``sft_extra_paths`` join, and ``when: before_sft`` (the default) steps see that whole mix. Each group
  runs in list order; the last rows are what the round's SFT trains on.
- ``config`` is the step's YAML recipe (a path, relative to where the run starts) or the same keys inline;
  ``overrides`` sets keys over it (dotted keys reach sections, as ``--set`` does). The round sets the step's input and
  output keys (its ``RoundStep``); strings may name the round's models: ``{policy}`` (the policy entering the round,
  which wrote the rejection samples), ``{reward_model}`` (this round's reward model) and ``{base_model}``.
- A step writes under ``round_<r>/post_data/<step>/``: ``rows.jsonl``, its report ``rows.report.json``, the config it
  ran with (``config.json``) and, when it read several files, their merge (``input.jsonl``); the ``DONE`` marker of
  :func:`training.rounds.run_step` keeps a rerun from repeating it.

Plugging in a step (the contract): the step's config dataclass and run function ``run(config) -> report dict``
(which writes the rows at the output key and may write ``report_path(output)`` beside them) are those of its
``training.post_data.cli.STEPS`` entry; add one ``ROUND_STEPS`` entry saying which config keys take the rows in (``rows_in``; ``None`` for a step that makes new rows, which are then added to the round's rows) and out
(``rows_out``; ``other_outputs`` for other files it writes), and which keys name other input files (``reads``:
fingerprinted with the run). A config's ``__post_init__`` may check values but not that model folders exist:
``{reward_model}`` is made by the round itself.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from training.post_data.cli import STEPS, load_attribute

# When steps run, in order: on the rejection samples alone, then on them with the user's SFT data.
WHEN = ("after_rejection_sampling", "before_sft")
# Keys that say where or on what device a step runs, not what it makes: left out of the run's fingerprint.
HOW_KEYS = ("device",)


@dataclasses.dataclass(frozen=True)
class RoundStep:
    """How a round runs one post-data step (see the module docstring for the contract).

    Args:
        rows_in: the config key the round sets to the rows so far; ``None``: the step makes new rows to add.
        rows_out: the config key the round sets to the step's output (``rows.jsonl`` in its folder).
        reads: config keys naming other input files or folders (a string or a list of them), fingerprinted.
        other_outputs: ``(config key, file name)`` of other files the step writes, put in its folder too.
    """

    rows_in: str | None
    rows_out: str
    reads: tuple[str, ...] = ()
    other_outputs: tuple[tuple[str, str], ...] = ()


# step (as `hf-llama3 post-data <step>` names it) -> how a round runs it; a new step adds its line here.
ROUND_STEPS: dict[str, RoundStep] = {
    "curate": RoundStep(
        rows_in="input_path",
        rows_out="output_path",
        reads=("tokenizer_path", "embedding_model_path"),
    ),
    "long-context": RoundStep(
        rows_in="sft_path",
        rows_out="output_path",
        reads=("documents_path", "code_repos", "tokenizer_path"),
    ),
    # New rows added to the round's: code kept by execution feedback [4.3.1], tool-use dialogs [4.3.5] (its DPO
    # pairs stay beside its rows, ``rows.dpo.jsonl``; the round's DPO trains on the round's preferences).
    "code": RoundStep(
        rows_in=None,
        rows_out="output_path",
        reads=("problems_path", "tokenizer_path"),
    ),
    "tools": RoundStep(
        rows_in=None,
        rows_out="output_path",
        reads=("prompts_path", "search_index", "tokenizer_path"),
        other_outputs=(("dpo_output_path", "rows.dpo.jsonl"),),
    ),
}


@dataclasses.dataclass
class PostDataEntry:
    """One post-data step of a round.

    Args:
        step: the step's name, as ``hf-llama3 post-data <step>`` names it (one with a ``ROUND_STEPS`` entry).
        when: ``after_rejection_sampling`` (on the rejection samples alone) or ``before_sft`` (on them and the user's
            SFT data).
        config: the step's YAML recipe (path) or its keys inline; ``{policy}``, ``{reward_model}`` and
            ``{base_model}`` in strings name the round's models; the round sets the input and output keys.
        overrides: keys set over ``config`` (dotted keys reach sections), e.g. a recipe file's model path.
    """

    step: str = ""
    when: Literal["after_rejection_sampling", "before_sft"] = "before_sft"
    config: str | dict[str, Any] = dataclasses.field(default_factory=dict)
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)


def ordered(entries: list[PostDataEntry], when: str) -> list[tuple[int, PostDataEntry]]:
    """``(index in the list, entry)`` of the entries that run at ``when``, in list order."""
    return [(i, entry) for i, entry in enumerate(entries) if entry.when == when]


def rooted(entry: Mapping[str, Any], root: Path) -> dict[str, Any]:
    """A recipe's ``post_data`` entry (as YAML gives it) with its relative paths (a config file, or inline ``reads``
    keys) made absolute under ``root``, for a recipe read from elsewhere than where it was written."""
    entry = copy.deepcopy(dict(entry))
    if isinstance(entry.get("config"), str):
        entry["config"] = str(root / entry["config"])
    reads = ROUND_STEPS[entry["step"]].reads if entry.get("step") in ROUND_STEPS else ()
    for section in (entry.get("config"), entry.get("overrides")):
        for key in reads if isinstance(section, dict) else ():
            value = section.get(key)
            if isinstance(value, list):
                section[key] = [str(root / v) if isinstance(v, str) and "{" not in v else v for v in value]
            elif isinstance(value, str) and value and "{" not in value:
                section[key] = str(root / value)
    return entry


def step_values(entry: PostDataEntry) -> dict[str, Any]:
    """The step's settings as the recipe gives them: its YAML file read (or a copy of the inline mapping), then
    ``overrides`` set over them."""
    from hf_llama3.recipe_loader import read_yaml, set_dotted

    if isinstance(entry.config, str):
        values = read_yaml(entry.config)
        if not isinstance(values, dict):
            raise ValueError(f"{entry.config}: a {entry.step} recipe must be a mapping of its config keys.")
    else:
        values = copy.deepcopy(dict(entry.config))
    for key, value in entry.overrides.items():
        set_dotted(values, key, copy.deepcopy(value))
    return values


def substitute(value: Any, models: Mapping[str, str]) -> Any:
    """``value`` with ``{policy}``/``{reward_model}``/``{base_model}`` in every string replaced by ``models``."""
    if isinstance(value, str):
        for name, path in models.items():
            value = value.replace("{" + name + "}", path)
        return value
    if isinstance(value, list):
        return [substitute(v, models) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, models) for k, v in value.items()}
    return value


def step_config(entry: PostDataEntry, models: Mapping[str, str], rows_in: str | None, rows_out: str, where: str):
    """The step's config dataclass for one round: its settings, the round's models and its input/output wired;
    a bad key is named under ``where`` (``post_data[1].config.mix_ratio``)."""
    from hf_llama3.recipe_loader import build

    spec = ROUND_STEPS[entry.step]
    values = substitute(step_values(entry), models)
    if spec.rows_in is not None:
        values[spec.rows_in] = rows_in
    values[spec.rows_out] = rows_out
    for key, name in spec.other_outputs:
        values[key] = str(Path(rows_out).with_name(name))
    return build(load_attribute(STEPS[entry.step].config_class), values, source="", where=where)


def check_post_data(entries: list[PostDataEntry], base_model: str) -> None:
    """Refuse, before anything trains, an unknown or repeated step, a missing config file or a bad config key."""
    from training.post_data.cli import STEPS

    seen: set[str] = set()
    for i, entry in enumerate(entries):
        key = f"post_data[{i}]"
        if entry.step not in ROUND_STEPS:
            unwired = (
                f" ({entry.step!r} has no round wiring yet: add it to ROUND_STEPS)" if entry.step in STEPS else ""
            )
            raise ValueError(
                f"{key}.step: unknown step {entry.step!r}{unwired}; known steps: {', '.join(sorted(ROUND_STEPS))}."
            )
        if entry.step in seen:
            raise ValueError(f"{key}.step: {entry.step!r} is listed twice; a round runs each step once.")
        seen.add(entry.step)
        if isinstance(entry.config, str) and not Path(entry.config).is_file():
            raise FileNotFoundError(f"{key}.config: {entry.config} does not exist; give the {entry.step} recipe.")
        models = {"policy": base_model, "reward_model": "round_0/reward/final", "base_model": base_model}
        step_config(entry, models, "rows_in.jsonl", "rows_out.jsonl", where=f"{key}.config")


def fingerprint_settings(entries: list[PostDataEntry]) -> dict[str, Any]:
    """Per step: its order, ``when`` and settings (the file's contents for a path), without the round-wired keys
    and the how keys, so a changed setting is named (``post_data.curate.config.dedup_threshold: 0.9 -> 0.8``)."""
    settings = {}
    for i, entry in enumerate(entries):
        spec = ROUND_STEPS[entry.step]
        values = step_values(entry)
        for key in (spec.rows_in, spec.rows_out, *(key for key, _ in spec.other_outputs), *HOW_KEYS):
            values.pop(key, None)
        settings[entry.step] = {"order": i, "when": entry.when, "config": values}
    return settings


def fingerprint_inputs(entries: list[PostDataEntry]) -> list[str]:
    """The files and folders the steps read besides the round's rows (their ``reads`` keys), placeholders skipped."""
    paths: list[str] = []
    for entry in entries:
        values = step_values(entry)
        for key in ROUND_STEPS[entry.step].reads:
            value = values.get(key)
            for path in value if isinstance(value, list) else [value]:
                if isinstance(path, str) and path and "{" not in path:
                    paths.append(path)
    return paths


def as_dialog(row: dict[str, Any]) -> dict[str, Any]:
    """A ``prompt``/``completion`` row as a ``messages`` dialog (other columns kept), so rows of both formats can
    share one file; a ``messages`` row as it is."""
    if row.get("messages") or "completion" not in row:
        return row
    prompt, completion = row["prompt"], row["completion"]
    prompt = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    completion = completion if isinstance(completion, list) else [{"role": "assistant", "content": completion}]
    rest = {k: v for k, v in row.items() if k not in ("prompt", "completion", "messages")}
    return {"messages": [*prompt, *completion], **rest}


def merge_rows(paths: list[str], output: Path) -> Path:
    """Every row of ``paths`` in one JSON-lines file (``prompt``/``completion`` rows turned into dialogs)."""
    from training.post_data.curate import write_jsonl
    from training.post_rows import load_rows

    rows = [as_dialog(row) for path in paths for row in load_rows(path).to_list()]
    write_jsonl(output, rows)
    return output


def _has_rows(path: Path) -> bool:
    """Whether a file holds anything but whitespace (read up to its first non-blank line)."""
    with path.open("rb") as handle:
        return any(line.strip() for line in handle)


def with_rows(paths: list[str], where: str) -> list[str]:
    """The files of ``paths`` that hold rows (a step may keep none); refused, naming ``where``, when none does."""
    kept = [p for p in paths if Path(p).is_dir() or _has_rows(Path(p))]
    if not kept:
        raise ValueError(f"{where}: no SFT rows left ({', '.join(paths)} are empty); see the post-data reports.")
    return kept


def run_post_data_step(
    entry: PostDataEntry, index: int, folder: Path, rows: list[str], models: Mapping[str, str]
) -> dict[str, Any]:
    """Run one step in ``folder`` on the round's ``rows`` (files); returns its report (also in ``rows.report.json``)."""
    from hf_llama3.checkpoint_io import atomic_output_file

    spec = ROUND_STEPS[entry.step]
    rows_in = None
    if spec.rows_in is not None:
        rows = with_rows(rows, f"{folder}: input of post_data[{index}] ({entry.step})")
        rows_in = rows[0] if len(rows) == 1 else str(merge_rows(rows, folder / "input.jsonl"))
    config = step_config(entry, models, rows_in, str(folder / "rows.jsonl"), where=f"post_data[{index}].config")
    with atomic_output_file(folder / "config.json") as tmp:
        tmp.write_text(json.dumps(dataclasses.asdict(config), indent=2, default=str) + "\n", encoding="utf-8")
    return load_attribute(STEPS[entry.step].run)(config)


def rows_after(entry: PostDataEntry, folder: Path, rows: list[str]) -> list[str]:
    """The round's rows once ``entry`` has run in ``folder``: its output, or the rows so far plus the new ones."""
    output = str(folder / "rows.jsonl")
    return [output] if ROUND_STEPS[entry.step].rows_in is not None else [*rows, output]
