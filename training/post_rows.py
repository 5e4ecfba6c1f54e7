"""Rows for the post-training stages: reading data files, row checks, the paper's data hygiene, tokenizing, packing.

Every stage (reward model, SFT, DPO, rounds) reads its rows through here, so a file or row problem is reported the
same way everywhere: one ``ValueError`` naming the file, the row number and the field, and what to do about it.

Preference rows come in three shapes, all read as a prompt and its responses ranked best first:
``prompt`` + ``chosen``/``rejected`` (optionally ``edited``, ranked ``edited > chosen > rejected`` [4.1.2]),
``prompt`` + ``responses`` (a list ranked best first), or pre-tokenized ``prompt_ids`` + ``responses_ids``.
Prompts are chat messages or plain text; responses are strings or assistant-message lists.

Hygiene [4.2.1] ("for both reward modeling and DPO, we use samples that are labeled as the chosen response being
significantly better or better than the rejected counterpart for training and discard samples with similar
responses"): :func:`filter_by_strength` and :func:`drop_similar_responses`, each returning what it dropped so the
stage's summary can count it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# [4.1.2] annotators rate preference strength on a 4-level scale; the paper keeps the two strongest levels [4.2.1].
KEPT_STRENGTHS = ("significantly better", "better")
# [4.1.2] ranking order of the response columns: edited > chosen > rejected.
RANKED_COLUMNS = ("edited", "chosen", "rejected")
# Two responses whose normalised texts are at least this similar (difflib ratio) are "similar responses" [4.2.1];
# the paper gives no number: 0.95 drops copies that differ by a word or punctuation only.
SIMILAR_RESPONSE_RATIO = 0.95
_SPACES = re.compile(r"\s+")


# ----------------------------------------------------------------------------------------------------------------
# Files


def _first_bad_json_line(path: Path) -> str | None:
    """``line N: <json error>`` for the first line of a JSON-lines file that is not one JSON object, else None."""
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                return f"line {number}: malformed JSON ({err.msg} at column {err.colno})"
            if not isinstance(value, dict):
                return f"line {number}: a row must be a JSON object, got {type(value).__name__}"
    return None


def _json_file_problem(path: Path) -> str | None:
    """Why a ``.json``/``.jsonl`` file cannot be read (the line at fault, which datasets hides), or None."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            json.loads(text)
        except json.JSONDecodeError as err:
            return f"line {err.lineno}: malformed JSON ({err.msg} at column {err.colno})"
        return None
    return _first_bad_json_line(path)


def _is_blank(path: Path) -> bool:
    """An empty file, or one of white space only (read only when small: a large file is not blank)."""
    size = path.stat().st_size
    return size == 0 or (size < 1 << 20 and not path.read_text(encoding="utf-8", errors="replace").strip())


def load_rows(path: str | Path):
    """Load a dataset file (json, jsonl, parquet) or a ``save_to_disk`` folder as a ``datasets.Dataset``.

    Raises one-line errors naming the file for a missing or empty file, a malformed JSON line (with its number, looked
    for once datasets has failed) and any other file datasets cannot read.
    """
    import datasets
    from datasets.exceptions import DatasetGenerationError

    path = Path(path)
    if not str(path) or not path.exists():
        raise FileNotFoundError(
            f"Dataset {str(path)!r} does not exist: set dataset_path to a json/jsonl/parquet file."
        )
    if path.is_dir():
        dataset = datasets.load_from_disk(str(path))
    else:
        kinds = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
        if path.suffix not in kinds:
            raise ValueError(f"Dataset {path}: unsupported extension {path.suffix!r}; use .json, .jsonl or .parquet.")
        if _is_blank(path):
            raise ValueError(f"{path}: the file is empty; give at least one row.")
        # A bar per small file, and datasets' own log of a parse failure, would bury the stage's one-line error.
        quiet, verbosity = datasets.is_progress_bar_enabled(), datasets.logging.get_verbosity()
        if quiet:
            datasets.disable_progress_bars()
        datasets.logging.set_verbosity(datasets.logging.CRITICAL)
        try:
            dataset = datasets.load_dataset(kinds[path.suffix], data_files=str(path), split="train")
        except DatasetGenerationError as err:
            # Looked for only now: scanning every line of a good file would cost a second parse of the data.
            bad = _json_file_problem(path) if kinds[path.suffix] == "json" else None
            if bad:
                raise ValueError(f"{path}: {bad}; fix or remove that line.") from err
            cause = err.__cause__ or err
            raise ValueError(
                f"{path}: cannot read the rows ({type(cause).__name__}: {str(cause).splitlines()[0][:300]})."
            ) from err
        finally:
            datasets.logging.set_verbosity(verbosity)
            if quiet:
                datasets.enable_progress_bars()
    if len(dataset) == 0:
        raise ValueError(f"{path}: no rows; give at least one row.")
    return dataset


# ----------------------------------------------------------------------------------------------------------------
# Row checks


def raise_for_problems(problems: list[str], what: str, limit: int = 10) -> None:
    """Raise one ValueError listing (up to ``limit``) row problems, so nothing trains on bad rows silently."""
    if problems:
        shown = "; ".join(problems[:limit]) + (
            f"; ... ({len(problems) - limit} more)" if len(problems) > limit else ""
        )
        raise ValueError(f"{what}: {len(problems)} bad row(s): {shown}. Fix or drop these rows and rerun.")


def is_empty(value: Any) -> bool:
    """An empty prompt or response: blank text, no message with content, or nothing at all."""
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return not any(str(m.get("content") or "").strip() or m.get("tool_calls") for m in value)
    return not value


# Columns of a row that say how its dialog renders (hf_llama3.chat_format.DialogOptions): the tools a tool-use
# dialog declares [4.3.5] (`hf-llama3 post-data tools` writes them beside `messages`), their call format, the date.
DIALOG_OPTION_COLUMNS = ("builtin_tools", "tools", "tool_prompt_format", "date_string")


def _without_nulls(value: Any) -> Any:
    """``value`` less the ``None`` entries of its dicts: datasets reads the JSON objects of a column as one struct
    whose absent keys come back as ``None`` (a tool schema never holds a null)."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def dialog_options(row: Any) -> dict[str, Any]:
    """The rendering options a row carries (``DIALOG_OPTION_COLUMNS``, unset ones left out); ``tools`` may be a
    list of JSON schemas or that list as a JSON string (what TRL's SFT reads)."""
    options = {}
    for key in DIALOG_OPTION_COLUMNS:
        value = row.get(key) if isinstance(row, Mapping) else None  # a dict, or datasets' lazy row in map()
        if value is None:
            continue
        if key == "tools":
            value = _without_nulls(json.loads(value) if isinstance(value, str) else value)
        options[key] = value
    return options


def dialog_problem(messages: Any, **options: Any) -> str | None:
    """Why a message list is not a Llama 3.1 dialog (unknown role, non-text content, a call to an undeclared
    tool...) under ``options`` (:func:`dialog_options`), or None when it is."""
    from hf_llama3.chat_format import DialogError, render_dialog

    try:
        render_dialog(messages, **options)
    except DialogError as err:
        return str(err)
    return None


def response_fields(row: dict[str, Any]) -> list[str]:
    """The field name of each of :func:`ranked_responses`' responses (``chosen``, ``responses[1]``...)."""
    if "responses" in row:
        return [f"responses[{k}]" for k in range(len(row["responses"] or []))]
    return [name for name in RANKED_COLUMNS if row.get(name) is not None]


def ranked_responses(row: dict[str, Any]) -> list[Any]:
    """A row's responses, best first: the ``responses`` list, or whichever of edited/chosen/rejected are present."""
    if "responses" in row:
        return list(row["responses"] or [])
    return [row[name] for name in RANKED_COLUMNS if row.get(name) is not None]


def check_preference_columns(column_names: Sequence[str], what: str) -> None:
    """Raise if the columns are not those of a preference row (naming the stage format they look like instead)."""
    names = set(column_names)
    if {"prompt_ids", "responses_ids"} <= names or {"prompt_ids", "chosen_ids", "rejected_ids"} <= names:
        return
    if "prompt" in names and ("responses" in names or {"chosen", "rejected"} <= names):
        return
    looks_like = ""
    if "messages" in names or {"prompt", "completion"} <= names:
        looks_like = " (these are SFT rows: dialogs to imitate, not ranked responses)"
    raise ValueError(
        f"{what}: columns {sorted(names)} are not preference rows{looks_like}; each row needs 'prompt' with either "
        "'chosen' and 'rejected' (optionally 'edited') or 'responses' (a list ranked best first); "
        "pre-tokenized rows need 'prompt_ids' and 'responses_ids'."
    )


def find_bad_ranked_rows(dataset, max_responses: int = 3) -> list[str]:
    """One message per malformed preference row: empty or ill-formed prompt/responses, wrong response count."""
    problems = []
    tokenized = "prompt_ids" in dataset.column_names
    for index, row in enumerate(dataset):
        if tokenized:
            prompt = row["prompt_ids"]
            responses = row["responses_ids"] if "responses_ids" in row else [row["chosen_ids"], row["rejected_ids"]]
            fields = [f"response {k}" for k in range(len(responses))]
        else:
            prompt, responses, fields = row.get("prompt"), ranked_responses(row), response_fields(row)
        if is_empty(prompt):
            problems.append(f"row {index}: empty prompt")
        if not 2 <= len(responses) <= max_responses:
            problems.append(f"row {index}: {len(responses)} responses (need 2 to {max_responses}, ranked best first)")
        problems += [f"row {index}: empty {field}" for field, r in zip(fields, responses) if is_empty(r)]
        if tokenized or is_empty(prompt):
            continue
        problems += _format_problems(index, prompt, responses, fields, dialog_options(row))
    return problems


def _is_response_turns(response: Any) -> bool:
    """A response as messages: assistant turns, with the ``ipython`` results of its tool calls after them [4.3.5]
    (a rejected trajectory may stop after a call); it starts with the assistant."""
    if not isinstance(response, list) or not response or not all(isinstance(m, Mapping) for m in response):
        return False
    roles = [m.get("role") for m in response]
    return roles[0] == "assistant" and set(roles) <= {"assistant", "ipython", "tool"}


def _format_problems(
    index: int, prompt: Any, responses: Sequence[Any], fields: Sequence[str], options: dict[str, Any]
) -> list[str]:
    """Chat prompts must be valid dialogs (under the row's ``options``); plain-text prompts take plain-text
    responses (no formatting to mask)."""
    if isinstance(prompt, str):
        return [
            f"row {index}: {field} is a message list but the prompt is plain text; give both as chat messages "
            "or both as text"
            for field, r in zip(fields, responses)
            if not isinstance(r, str)
        ]
    if not isinstance(prompt, list):
        return [f"row {index}: prompt is {type(prompt).__name__}; give chat messages or text"]
    problem = dialog_problem(prompt, **options)
    if problem:
        return [f"row {index}: prompt: {problem}"]
    problems = []
    for field, response in zip(fields, responses):
        if isinstance(response, str):
            continue
        if not _is_response_turns(response):
            problems.append(
                f"row {index}: {field} must be text or assistant messages (role 'assistant'; a tool-use response "
                "may hold the 'ipython' results of its calls)"
            )
            continue
        problem = dialog_problem(list(prompt) + list(response), **options)
        if problem:
            problems.append(f"row {index}: {field}: {problem}")
    return problems


# ----------------------------------------------------------------------------------------------------------------
# Hygiene [4.2.1]


def filter_by_strength(dataset, column: str, kept_strengths: Sequence[str], what: str) -> tuple[Any, dict[str, int]]:
    """Keep rows rated one of ``kept_strengths`` [4.2.1]; rows without a rating (null) are kept and counted.

    Returns the kept rows and ``{"dropped_weak_preference": n, "unrated": m}``; a dataset without the column is
    returned unchanged (no counts). Raises when every row is dropped.
    """
    if column not in dataset.column_names:
        return dataset, {}
    kept = {s.strip().lower() for s in kept_strengths}
    ratings = [None if s is None else str(s).strip().lower() for s in dataset[column]]
    keep = [i for i, s in enumerate(ratings) if s is None or s in kept]
    if not keep:
        raise ValueError(f"{what}: no row has a {column} in {sorted(kept)}; every row would be dropped [4.2.1].")
    counts = {"dropped_weak_preference": len(ratings) - len(keep), "unrated": sum(s is None for s in ratings)}
    return (dataset.select(keep) if len(keep) < len(ratings) else dataset), counts


def response_text(response: Any) -> str:
    """The text of a response (string, assistant messages or token ids), normalised for comparison."""
    if isinstance(response, list) and response and isinstance(response[0], dict):
        response = "\n".join(str(m.get("content") or "") + json.dumps(m.get("tool_calls") or "") for m in response)
    elif not isinstance(response, str):
        response = " ".join(map(str, response or []))
    return _SPACES.sub(" ", response).strip().casefold()


def are_similar(a: Any, b: Any, ratio: float = SIMILAR_RESPONSE_RATIO) -> bool:
    """Identical after normalising case and white space, or at least ``ratio`` alike (difflib) [4.2.1]."""
    left, right = response_text(a), response_text(b)
    if left == right:
        return True
    return ratio < 1.0 and difflib.SequenceMatcher(None, left, right, autojunk=False).ratio() >= ratio


def drop_similar_responses(responses: Sequence[Any], ratio: float = SIMILAR_RESPONSE_RATIO) -> list[int]:
    """Indices (best first) of the responses kept: each one similar to a better-ranked kept one is dropped."""
    kept: list[int] = []
    for index, response in enumerate(responses):
        if not any(are_similar(responses[k], response, ratio) for k in kept):
            kept.append(index)
    return kept


# ----------------------------------------------------------------------------------------------------------------
# Tokenizing and packing


def encode_prompt_and_responses(
    tokenizer, prompt: Any, responses: Sequence[Any], **options: Any
) -> tuple[list[int], list[list[int]], list[list[int]]]:
    """Token ids of a prompt, of each response continuing it, and each response's formatting mask.

    Chat prompts (lists of messages) are encoded with ``hf_llama3.encode_dialog`` (the Llama 3.1 dialog format,
    ending with the assistant header); each response is the rest of the encoded conversation: its content and
    ``<|eot_id|>``, whose formatting mask marks header and termination tokens [4.1.4]. Plain-text prompts get
    ``<|begin_of_text|>`` and each response ends with the EOS token, its only formatting token. ``options`` are
    the row's dialog options (:func:`dialog_options`: declared tools...).
    """
    from hf_llama3 import encode_dialog

    if isinstance(prompt, str):
        prompt_ids = tokenizer(prompt).input_ids
        eos = tokenizer.eos_token_id
        ids = [[*tokenizer(r, add_special_tokens=False).input_ids, eos] for r in responses]
        return prompt_ids, ids, [[0] * (len(r) - 1) + [1] for r in ids]
    prompt_ids = encode_dialog(tokenizer, prompt, add_generation_prompt=True, **options).input_ids
    response_ids, masks = [], []
    for response in responses:
        message = response if isinstance(response, list) else [{"role": "assistant", "content": response}]
        full = encode_dialog(tokenizer, list(prompt) + list(message), **options)
        if full.input_ids[: len(prompt_ids)] != prompt_ids:
            raise ValueError("The dialog encodes the prompt differently with and without a response.")
        response_ids.append(full.input_ids[len(prompt_ids) :])
        # Masked: formatting tokens [4.1.4] and, in a tool-use response, the ipython turns (tool output is not the
        # policy's to score): the complement of the tokens DPO scores.
        masks.append([1 - scored for scored in full.dpo_loss_mask[len(prompt_ids) :]])
    return prompt_ids, response_ids, masks


def tokenize_prompt_and_responses(
    tokenizer, prompt: Any, responses: Sequence[Any], **options: Any
) -> tuple[list[int], list[list[int]]]:
    """Token ids of a prompt and of each response continuing it (:func:`encode_prompt_and_responses` less masks)."""
    prompt_ids, response_ids, _ = encode_prompt_and_responses(tokenizer, prompt, responses, **options)
    return prompt_ids, response_ids


PROMPT_SEGMENT, PAD_SEGMENT = 0, -1
PACKED_COLUMNS = ["input_ids", "position_ids", "segment_ids", "response_ends", "response_ranks"]


def pack_ranked_row(
    prompt_ids: Sequence[int], ranked_response_ids: Sequence[Sequence[int]], order: Sequence[int] | None = None
) -> dict[str, list]:
    """Pack a prompt and its responses into one row [4.1.2].

    ``order`` lists which ranked response goes in each packed slot (default: ranked order). Returns the packed
    ``input_ids``, ``position_ids`` (each response continues from the end of the prompt), ``segment_ids``
    (0 for the prompt, slot + 1 for a response), ``response_ends`` (index of each slot's last token) and
    ``response_ranks`` (0 = best).
    """
    order = list(range(len(ranked_response_ids))) if order is None else list(order)
    input_ids, positions = list(prompt_ids), list(range(len(prompt_ids)))
    segments, ends, ranks = [PROMPT_SEGMENT] * len(prompt_ids), [], []
    for slot, rank in enumerate(order):
        response = list(ranked_response_ids[rank])
        input_ids += response
        positions += range(len(prompt_ids), len(prompt_ids) + len(response))
        segments += [slot + 1] * len(response)
        ends.append(len(input_ids) - 1)
        ranks.append(rank)
    return {
        "input_ids": input_ids,
        "position_ids": positions,
        "segment_ids": segments,
        "response_ends": ends,
        "response_ranks": ranks,
    }


def clean_ranked_rows(
    dataset,
    what: str,
    *,
    strength_column: str = "strength",
    kept_strengths: Sequence[str] = KEPT_STRENGTHS,
    similar_ratio: float = SIMILAR_RESPONSE_RATIO,
    max_responses: int = 3,
) -> tuple[list[tuple[int, Any, list[Any]]], dict[str, int]]:
    """Checked preference rows after the hygiene rules [4.2.1], and what each rule dropped.

    Returns ``(index, prompt, responses best first)`` per kept row (prompt and responses as token ids for
    pre-tokenized rows) and the counts: ``rows_read``, ``dropped_weak_preference``, ``unrated``,
    ``dropped_similar_responses`` (responses similar to a better-ranked one), ``dropped_similar_rows`` (rows left
    with fewer than 2 responses) and ``rows_kept``. Bad rows raise one error naming ``what`` and the row numbers.
    """
    check_preference_columns(dataset.column_names, what)
    raise_for_problems(find_bad_ranked_rows(dataset, max_responses), what)
    counts = {"rows_read": len(dataset), "dropped_weak_preference": 0, "unrated": 0}
    counts |= filter_by_strength(dataset, strength_column, kept_strengths, what)[1]
    kept_strengths_set = {s.strip().lower() for s in kept_strengths}
    tokenized = "prompt_ids" in dataset.column_names
    rows, similar, similar_rows = [], 0, 0
    for index, row in enumerate(dataset):
        strength = row.get(strength_column)
        if strength is not None and str(strength).strip().lower() not in kept_strengths_set:
            continue  # [4.2.1] weak preference (counted above)
        if tokenized:
            prompt = row["prompt_ids"]
            responses = row["responses_ids"] if "responses_ids" in row else [row["chosen_ids"], row["rejected_ids"]]
        else:
            prompt, responses = row["prompt"], ranked_responses(row)
        keep = drop_similar_responses(responses, similar_ratio)
        similar += len(responses) - len(keep)
        if len(keep) < 2:
            similar_rows += 1
            continue
        rows.append((index, prompt, [responses[k] for k in keep]))
    counts |= {"dropped_similar_responses": similar, "dropped_similar_rows": similar_rows, "rows_kept": len(rows)}
    if not rows:
        raise ValueError(
            f"{what}: no row is left after the hygiene rules [4.2.1] ({counts}); every pair is weak or similar."
        )
    return rows, counts


@dataclasses.dataclass
class PreferenceHygiene:
    """The preference-data rules the reward model and DPO share [4.2.1]; mixed into both stage configs.

    Args:
        strength_column: Column holding the annotated preference strength; rows rated outside ``kept_strengths``
            are dropped and counted. Rows with no rating (null, e.g. pairs ranked by a reward model) are kept.
        kept_strengths: Strength labels to keep [4.2.1: "significantly better" and "better"].
        similar_response_ratio: Responses whose normalised texts are this alike (difflib ratio, 1.0 = identical
            after case and white-space normalisation only) count as similar; the worse one is dropped, and a row
            left with fewer than 2 responses is dropped [4.2.1: "discard samples with similar responses"].
    """

    strength_column: str = "strength"
    kept_strengths: list[str] = dataclasses.field(default_factory=lambda: list(KEPT_STRENGTHS))
    similar_response_ratio: float = dataclasses.field(
        default=SIMILAR_RESPONSE_RATIO, metadata={"min": 0.0, "max": 1.0}
    )

    def hygiene_settings(self) -> dict[str, Any]:
        """Keyword arguments of :func:`clean_ranked_rows`."""
        return {
            "strength_column": self.strength_column,
            "kept_strengths": [s.strip().lower() for s in self.kept_strengths],
            "similar_ratio": self.similar_response_ratio,
        }
