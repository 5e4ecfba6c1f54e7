"""System-level safety [paper 5.4.7]: a guard as an input/output filter around generation and data pipelines.

The paper deploys Llama Guard 3 next to the model: the user's prompt is checked before the model sees it (input
filter) and the model's answer before the user sees it (output filter); a blocked turn is answered with a refusal.
:class:`SafetyFilter` does that with any :class:`~training.safety.classifier.GuardClassifier` and keeps counts for the
stage reports. It is used by rejection sampling (unsafe samples are dropped before the best/worst choice:
``training.rejection_sampling``, ``safety_guard_path``) and by :func:`generate_reply`, the generation helper (a
tool-use chat loop, which the project does not have yet, would call ``check_input``/``check_output`` the same way).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from training.safety.classifier import GuardClassifier, GuardVerdict

# Our default; the paper does not publish the refusal text of its system-level filter.
DEFAULT_REFUSAL = "I'm sorry, but I can't help with that."


@dataclasses.dataclass
class FilterCounts:
    """How many turns the filter checked and blocked, per side (what the stage reports print)."""

    input_checked: int = 0
    input_blocked: int = 0
    output_checked: int = 0
    output_blocked: int = 0

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class SafetyFilter:
    """Input/output filter around a guard.

    Args:
        guard: The classifier (``GuardClassifier.from_pretrained(folder)``).
        refusal_message: What a blocked turn is answered with.
        threshold: P(unsafe) at or above which a turn is blocked (default: the guard's threshold).
        check_inputs_enabled / check_outputs_enabled: Turn either side off (``check_*`` then allows everything).
    """

    def __init__(
        self,
        guard: GuardClassifier,
        refusal_message: str = DEFAULT_REFUSAL,
        threshold: float | None = None,
        check_inputs_enabled: bool = True,
        check_outputs_enabled: bool = True,
    ) -> None:
        if not isinstance(refusal_message, str) or not refusal_message.strip():
            raise ValueError("refusal_message must be a non-empty string (what a blocked turn is answered with).")
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}.")
        self.guard = guard
        self.refusal_message = refusal_message
        self.threshold = guard.threshold if threshold is None else threshold
        self.check_inputs_enabled = check_inputs_enabled
        self.check_outputs_enabled = check_outputs_enabled
        self.counts = FilterCounts()

    @classmethod
    def from_pretrained(cls, folder: str, **kwargs: Any) -> SafetyFilter:
        """A filter around the guard in ``folder`` (ours or Meta's Llama Guard 3 layout)."""
        return cls(GuardClassifier.from_pretrained(folder), **kwargs)

    def refusal(self) -> dict[str, str]:
        """The assistant message that replaces a blocked turn."""
        return {"role": "assistant", "content": self.refusal_message}

    def _check(self, conversations: Sequence[Sequence[Mapping[str, Any]]], side: str) -> list[GuardVerdict | None]:
        enabled = self.check_inputs_enabled if side == "input" else self.check_outputs_enabled
        if not enabled or not conversations:
            return [None] * len(conversations)
        verdicts = self.guard.classify(conversations, check=side, threshold=self.threshold)
        blocked = sum(v.unsafe for v in verdicts)
        if side == "input":
            self.counts.input_checked += len(verdicts)
            self.counts.input_blocked += blocked
        else:
            self.counts.output_checked += len(verdicts)
            self.counts.output_blocked += blocked
        return list(verdicts)

    def check_inputs(self, conversations: Sequence[Sequence[Mapping[str, Any]]]) -> list[GuardVerdict | None]:
        """Verdicts on the last user turn of each conversation (``None`` when input checks are off)."""
        return self._check(conversations, "input")

    def check_outputs(self, conversations: Sequence[Sequence[Mapping[str, Any]]]) -> list[GuardVerdict | None]:
        """Verdicts on the last assistant turn of each conversation (``None`` when output checks are off)."""
        return self._check(conversations, "output")

    def check_input(self, messages: Sequence[Mapping[str, Any]]) -> GuardVerdict | None:
        """Verdict on the last user turn of ``messages``."""
        return self.check_inputs([messages])[0]

    def check_output(self, messages: Sequence[Mapping[str, Any]]) -> GuardVerdict | None:
        """Verdict on the last assistant turn of ``messages``."""
        return self.check_outputs([messages])[0]

    @staticmethod
    def blocked(verdict: GuardVerdict | None) -> bool:
        """Whether a verdict blocks its turn (``None``, from a disabled side, never does)."""
        return verdict is not None and verdict.unsafe

    def drop_unsafe_samples(
        self, dialogs: Sequence[Sequence[Mapping[str, Any]]], samples: Sequence[Sequence[str]]
    ) -> list[list[bool]]:
        """For each prompt's sampled answers, whether the output filter blocks each one (rejection sampling)."""
        flat = [[*dialog, {"role": "assistant", "content": text}] for dialog, texts in zip(dialogs, samples)
                for text in texts if text.strip()]  # fmt: skip
        verdicts = iter(self.check_outputs(flat))
        return [[bool(text.strip()) and self.blocked(next(verdicts)) for text in texts] for texts in samples]

    def report(self) -> dict[str, Any]:
        """Counts and settings for a stage report."""
        return {"threshold": self.threshold, "refusal_message": self.refusal_message, **self.counts.to_dict()}


def generate_reply(
    model,
    tokenizer,
    messages: Sequence[Mapping[str, Any]],
    safety_filter: SafetyFilter | None = None,
    max_new_tokens: int = 256,
    **generate_kwargs: Any,
) -> dict[str, Any]:
    """One assistant turn for ``messages`` with the system-level filter [5.4.7] around generation.

    Returns ``{"message": assistant message, "blocked": None | "input" | "output", "verdict": GuardVerdict | None}``:
    an unsafe prompt is refused without calling the model; an unsafe answer is replaced by the refusal.
    """
    import torch

    from hf_llama3 import chat_generation_config, encode_dialog, parse_assistant_message

    if safety_filter is not None:
        verdict = safety_filter.check_input(messages)
        if safety_filter.blocked(verdict):
            return {"message": safety_filter.refusal(), "blocked": "input", "verdict": verdict}
    ids = encode_dialog(tokenizer, list(messages), add_generation_prompt=True).input_ids
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    generation_config = chat_generation_config(tokenizer, max_new_tokens=max_new_tokens, **generate_kwargs)
    with torch.no_grad():
        output = model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), generation_config=generation_config
        )
    text = tokenizer.decode(output[0, len(ids) :].tolist(), skip_special_tokens=False)
    reply = parse_assistant_message(text)
    reply = {k: v for k, v in reply.items() if k in ("role", "content", "tool_calls")}
    if safety_filter is not None and (reply.get("content", "").strip() or reply.get("tool_calls")):
        verdict = safety_filter.check_output([*messages, reply])
        if safety_filter.blocked(verdict):
            return {"message": safety_filter.refusal(), "blocked": "output", "verdict": verdict}
        return {"message": reply, "blocked": None, "verdict": verdict}
    return {"message": reply, "blocked": None, "verdict": None}
