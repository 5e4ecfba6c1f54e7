"""When no document survives a curation stage: say which step dropped the last ones, and why, in one line.

Without this check a run whose every document is filtered out crashes later (a dedup step that never saw a
document has no statistics; there is nothing to tokenize). The step statistics of a stage (datatrove's, summed over
its tasks by :func:`data.report.stage_steps`; several lists are summed per step) name the first step that received
documents and passed none on: the one that emptied the run.
"""

from __future__ import annotations

from collections.abc import Iterable


class NothingSurvived(ValueError):
    """No document is left after a curation stage; the message names the step and its drop reasons."""


def _summed(step_lists: Iterable[list[dict]]) -> dict[str, dict]:
    """Per step name (in first-seen order): documents in, out and dropped per reason, over every list."""
    total: dict[str, dict] = {}
    for steps in step_lists:
        for step in steps:
            entry = total.setdefault(step["step"], {"in_docs": 0, "out_docs": 0, "dropped": {}})
            entry["in_docs"] += step["in_docs"]
            entry["out_docs"] += step["out_docs"]
            for reason, counts in step["dropped"].items():
                entry["dropped"][reason] = entry["dropped"].get(reason, 0) + counts["docs"]
    return total


def check_survivors(stage: str, kept: int, step_lists: Iterable[list[dict]], where: str) -> None:
    """Raise :class:`NothingSurvived` when ``kept`` is 0, naming the step of ``stage`` that dropped everything.

    ``where`` is the folder holding the stage's statistics (named in the message for the details).
    """
    if kept > 0:
        return
    steps = _summed(step_lists)
    emptied = next((name for name, s in steps.items() if s["in_docs"] > 0 and s["out_docs"] == 0), None)
    if emptied is None:
        cause = "the inputs hold no readable documents" if stage == "filter" else "no document reached this stage"
    else:
        dropped = steps[emptied]["dropped"]
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(dropped.items(), key=lambda kv: -kv[1]))
        cause = f"{emptied} dropped the last {steps[emptied]['in_docs']} ({reasons})"
    raise NothingSurvived(
        f"no document survived curation stage {stage!r}: {cause}; details in {where}. "
        "Check the inputs or loosen that step's settings, in another output_dir."
    )
