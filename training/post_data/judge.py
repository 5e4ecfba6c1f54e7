"""Zero-shot judging by log-likelihood: the policy/judge model scores a fixed set of answers to a question.

Topic, rubric-quality and difficulty tags of [4.2.3] are all "ask the model, read its answer". Reading the answer
as the most likely of the allowed options (each option's mean token log-probability as the assistant's reply) gives
a distribution over the options from one forward pass per option, never a free-text reply that has to be parsed,
and works the same for a tiny test model and an 8B judge. Written here because transformers has no multiple-choice
scoring for causal LMs; the forward pass itself is the model's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


class LogLikelihoodJudge:
    """A causal LM that answers chat questions by picking among options.

    Args:
        model: a causal LM (``Llama3ForCausalLM`` or any ``AutoModelForCausalLM``).
        tokenizer: its Llama 3 tokenizer.
        name: the model's name written beside every tag it produces (its folder, usually).
    """

    def __init__(self, model: Any, tokenizer: Any, name: str) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name

    @torch.no_grad()
    def option_probabilities(self, question: str, options: Sequence[str]) -> np.ndarray:
        """Softmax over ``options`` of their mean token log-likelihood as the assistant's reply to ``question``.

        The mean (not the sum) keeps long option names from losing to short ones for their length alone.
        """
        from hf_llama3 import encode_dialog

        prompt = [{"role": "user", "content": question}]
        prompt_ids = encode_dialog(self.tokenizer, prompt, add_generation_prompt=True).input_ids
        continuations = [self.tokenizer(option, add_special_tokens=False).input_ids for option in options]
        # Left padding puts every option at the end of its row, so only the last ``longest + 1`` positions need
        # logits: over a 128K vocabulary those are most of the cost.
        longest = max(len(c) for c in continuations)
        width = len(prompt_ids) + longest
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(options), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, continuation in enumerate(continuations):
            sequence = [*prompt_ids, *continuation]
            ids[row, width - len(sequence) :] = torch.tensor(sequence)
            mask[row, width - len(sequence) :] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        device = next(self.model.parameters()).device
        logits = (
            self.model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                logits_to_keep=longest + 1,
            )
            .logits.float()
            .cpu()
        )
        # logits[:, j] predicts token width - longest + j: the last ``longest`` tokens of each row.
        log_probs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, -longest:, None]).squeeze(-1)
        scores = [log_probs[row, longest - len(c) :].mean().item() for row, c in enumerate(continuations)]
        return torch.softmax(torch.tensor(scores), dim=0).numpy()

    def expected_score(self, question: str, levels: Sequence[int]) -> tuple[float, int]:
        """Expected value and most likely level of an integer rating (each level's digits are the options)."""
        probabilities = self.option_probabilities(question, [str(level) for level in levels])
        return float(np.dot(probabilities, levels)), int(levels[int(probabilities.argmax())])
