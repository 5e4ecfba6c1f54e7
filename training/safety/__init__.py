"""Safety [paper 5.4]: a Llama Guard 3-style classifier, the system-level filter, and safety data for post-training.

- ``policy``: the hazard categories (Llama Guard 3's S1-S14, subsets and extensions).
- ``prompt`` (+ ``guard_chat_template.jinja``): the Llama Guard 3 prompt format for input/output checks.
- ``classifier``: P(unsafe) of the first answer token, threshold, named categories.
- ``train``: SFT of a checkpoint into a guard on its answer only (TRL), exported as a stock Llama folder.
- ``metrics``: precision, recall, F1, AUPRC, false-positive rate per category, threshold sweep.
- ``filter``: ``SafetyFilter`` (input/output checks, refusals, counts) and the filtered generation helper.
- ``synthetic`` / ``mix``: labelled guard data and adversarial/borderline rows mixed into SFT and DPO.
- ``chat_eval``: violation rate and false refusal rate of a chat model, the guard as judge.
- ``cli``: ``hf-llama3 guard {train,classify,eval,chat-eval}``.
"""

from training.safety.policy import LLAMA_GUARD_3_CATEGORIES, SafetyCategory, SafetyPolicy
from training.safety.prompt import format_answer, guard_chat_template, parse_answer, render_guard_prompt

__all__ = [
    "LLAMA_GUARD_3_CATEGORIES",
    "SafetyCategory",
    "SafetyPolicy",
    "format_answer",
    "guard_chat_template",
    "parse_answer",
    "render_guard_prompt",
]
