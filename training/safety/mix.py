"""Safety data in post-training [paper 5.4.3]: adversarial and borderline rows mixed into SFT and DPO at set ratios.

The paper adds adversarial prompts with safe (refusing) responses and borderline prompts with helpful responses to
the SFT and DPO data, and tunes their share to balance violations against false refusals. The stages take a safety
file (rows in the stage's own format plus ``kind``: ``"adversarial"`` or ``"borderline"``, e.g. from
``training.safety.synthetic``) and two ratios, each the share of the *final* dataset given to that kind:
with ``n`` base rows and ratios ``a`` and ``b``, the result has ``n`` base rows, ``round(a * n / (1 - a - b))``
adversarial and ``round(b * n / (1 - a - b))`` borderline rows (drawn without replacement while the pool lasts,
then cycled), shuffled with the stage seed. The paper does not publish its ratios; both default to 0 (off).
"""

from __future__ import annotations

import dataclasses
import logging
import random
from typing import ClassVar

from datasets import Dataset, concatenate_datasets

logger = logging.getLogger(__name__)
KINDS = ("adversarial", "borderline")


@dataclasses.dataclass
class SafetyMixInputs:
    """Stage settings for mixing safety data in (mixed into the SFT and DPO configs).

    Args:
        safety_dataset_path: Safety rows in the stage's format plus a ``kind`` column; ``None`` turns mixing off.
        safety_adversarial_ratio: Share of the final dataset given to adversarial rows (refusals) [5.4.3].
        safety_borderline_ratio: Share of the final dataset given to borderline rows (helpful answers) [5.4.3].
    """

    safety_dataset_path: str | None = None
    safety_adversarial_ratio: float = 0.0
    safety_borderline_ratio: float = 0.0

    # Bounds the shared recipe loader checks (the stage configs merge them with the trainer's).
    RECIPE_CONSTRAINTS: ClassVar[dict[str, dict[str, float]]] = {
        "safety_adversarial_ratio": {"min": 0, "max": 1},
        "safety_borderline_ratio": {"min": 0, "max": 1},
    }

    def validate_safety_mix(self) -> None:
        """Errors for ratios outside [0, 1), summing to 1 or more, or set without a safety file."""
        check_ratios(self.safety_adversarial_ratio, self.safety_borderline_ratio)
        ratios_set = self.safety_adversarial_ratio > 0 or self.safety_borderline_ratio > 0
        if ratios_set and not self.safety_dataset_path:
            raise ValueError(
                "safety_adversarial_ratio/safety_borderline_ratio are set but safety_dataset_path is not: "
                "name the safety rows file (rows with a 'kind' column) or set the ratios to 0."
            )


def check_ratios(adversarial_ratio: float, borderline_ratio: float) -> None:
    """Both ratios in [0, 1) and their sum below 1 (the base data keeps the rest)."""
    for name, value in (
        ("safety_adversarial_ratio", adversarial_ratio),
        ("safety_borderline_ratio", borderline_ratio),
    ):
        if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1) (a share of the final dataset), got {value!r}.")
    if adversarial_ratio + borderline_ratio >= 1.0:
        raise ValueError(
            f"safety_adversarial_ratio + safety_borderline_ratio = {adversarial_ratio + borderline_ratio} must be "
            "below 1: the rest of the dataset is the base data."
        )


def mix_safety_rows(
    base: Dataset, safety: Dataset, adversarial_ratio: float, borderline_ratio: float, seed: int = 0
) -> Dataset:
    """``base`` plus adversarial and borderline rows of ``safety`` at the given shares of the result, shuffled.

    ``safety`` needs the base columns and ``kind``; the result has the base columns only.
    """
    from training.reward import raise_for_problems

    check_ratios(adversarial_ratio, borderline_ratio)
    if "kind" not in safety.column_names:
        raise ValueError(
            f"Safety rows have columns {sorted(safety.column_names)} but no 'kind': tag each row 'adversarial' "
            "(safe refusal) or 'borderline' (helpful answer)."
        )
    missing = sorted(set(base.column_names) - set(safety.column_names))
    if missing:
        raise ValueError(f"Safety rows lack the stage's column(s) {missing}: give them the same format as the data.")
    kinds = safety["kind"]
    raise_for_problems(
        [f"row {i}: kind {k!r} is not 'adversarial' or 'borderline'" for i, k in enumerate(kinds) if k not in KINDS],
        "safety dataset",
    )
    scale = len(base) / (1.0 - adversarial_ratio - borderline_ratio)
    rng = random.Random(seed)
    parts = [base]
    counts = {}
    for kind, ratio in (("adversarial", adversarial_ratio), ("borderline", borderline_ratio)):
        wanted = round(ratio * scale)
        counts[kind] = wanted
        if wanted == 0:
            continue
        pool = [i for i, k in enumerate(kinds) if k == kind]
        if not pool:
            raise ValueError(f"safety_{kind}_ratio is {ratio} but the safety dataset has no '{kind}' rows.")
        rng.shuffle(pool)
        picked = [pool[j % len(pool)] for j in range(wanted)]
        if wanted > len(pool):
            logger.warning("Safety mix: %d %s rows wanted, %d available; rows repeat.", wanted, kind, len(pool))
        parts.append(safety.select(picked).select_columns(base.column_names).cast(base.features))
    logger.info("Safety mix: %d base rows + %s", len(base), counts)
    return concatenate_datasets(parts).shuffle(seed=seed) if len(parts) > 1 else base


def mix_from_config(dataset: Dataset, config: SafetyMixInputs, seed: int = 0) -> Dataset:
    """``dataset`` with the configured safety rows mixed in (unchanged when ``safety_dataset_path`` is unset)."""
    if not config.safety_dataset_path:
        return dataset
    from training.post_cli import load_rows

    safety = load_rows(config.safety_dataset_path)
    return mix_safety_rows(dataset, safety, config.safety_adversarial_ratio, config.safety_borderline_ratio, seed=seed)
