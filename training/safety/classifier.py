"""Classification with a Llama Guard 3-style guard [paper 5.4.7]: the probability of ``unsafe`` and the categories.

As Meta's Llama Guard 3 model card describes, the classifier score is the probability of the answer's first token
being ``unsafe`` (after the assistant header's blank line); a threshold turns it into a decision, and the category
list is what the guard writes on the next line. One teacher-forced forward of ``prompt + "\\n\\nunsafe\\nS"`` gives
both the score and, at the last position, the distribution over the number after ``S`` (``S1`` ... ``S14`` are
``S`` + one number token in the Llama 3 vocabulary), from which each category's score is
``P(unsafe) * P(code | unsafe)``. The category list of an unsafe verdict is decoded greedily.

Any causal LM folder with a Llama 3 tokenizer loads: a guard exported by ``hf-llama3 guard train`` (a stock Llama
folder with ``guard.json`` naming its policy and threshold) or a folder in Meta's Llama Guard 3 layout (a stock Llama
checkpoint with its tokenizer; the default 14-category policy and threshold 0.5 apply).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from training.safety.policy import SafetyPolicy
from training.safety.prompt import ANSWER_PREFIX, EOT, UNSAFE, render_guard_prompt

GUARD_CONFIG_NAME = "guard.json"
# [model card] "we look at the probability for the first token ... We can then apply score thresholding".
DEFAULT_THRESHOLD = 0.5


@dataclasses.dataclass
class GuardVerdict:
    """One classification: ``unsafe`` (score >= threshold), the ``score`` P(unsafe), the named ``categories`` and
    every policy category's score P(unsafe) * P(category | unsafe)."""

    unsafe: bool
    score: float
    categories: list[str]
    category_scores: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def read_guard_config(folder: str | Path) -> dict[str, Any]:
    """``guard.json`` of a guard folder (``{}`` when absent, as in Meta's Llama Guard 3 folders)."""
    path = Path(folder) / GUARD_CONFIG_NAME
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); rewrite it or delete it to use the defaults.") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object with 'policy' and 'threshold'.")
    return data


def load_guard_tokenizer(folder: str | Path):
    """The folder's tokenizer (``tokenizer.json`` or a tiktoken ``tokenizer.model``), else the real Llama 3 one."""
    from transformers import AutoTokenizer

    from hf_llama3 import load_tokenizer

    folder = Path(folder)
    if (folder / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(folder)
    if (folder / "tokenizer.model").is_file():
        return load_tokenizer(folder)
    return load_tokenizer()


class GuardClassifier:
    """A causal LM used as a Llama Guard 3-style classifier.

    Args:
        model: The guard (any causal LM with ``base_model_prefix`` and output embeddings: ours or stock Llama).
        tokenizer: Its Llama 3 tokenizer.
        policy: The categories the prompt lists (default: Llama Guard 3's 14).
        threshold: P(unsafe) at or above which a turn is unsafe.
        with_descriptions: List category descriptions in the prompt (as the guard was trained).
        batch_size: Conversations per forward.
    """

    def __init__(
        self,
        model,
        tokenizer,
        policy: SafetyPolicy | None = None,
        threshold: float = DEFAULT_THRESHOLD,
        with_descriptions: bool = False,
        batch_size: int = 8,
    ) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}.")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.policy = policy or SafetyPolicy.default()
        self.threshold = threshold
        self.with_descriptions = with_descriptions
        self.batch_size = batch_size
        encode = self._encode
        prefix = encode(ANSWER_PREFIX)
        # prompt + "\n\nunsafe\nS": score at the first answer token, category number at the end.
        self._head = encode(f"{ANSWER_PREFIX}{UNSAFE}\nS")
        if self._head[: len(prefix)] != prefix:
            raise ValueError("The tokenizer splits the guard answer unexpectedly; use a Llama 3 tokenizer.")
        self._unsafe_index = len(prefix)
        self._unsafe_id = self._head[self._unsafe_index]
        self._code_ids = {}
        for category in self.policy.categories:
            ids = encode(str(category.number))
            if len(ids) != 1:
                raise ValueError(f"Category {category.code}: its number is not one token in this vocabulary.")
            self._code_ids[category.code] = ids[0]
        self._stop_ids = [i for i in (tokenizer.convert_tokens_to_ids(EOT), tokenizer.eos_token_id) if i is not None]

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        threshold: float | None = None,
        policy: SafetyPolicy | None = None,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> GuardClassifier:
        """Load a guard folder: ours (with ``guard.json``) or Meta's Llama Guard 3 layout (defaults apply)."""
        from transformers import AutoModelForCausalLM

        import hf_llama3  # noqa: F401  (registers our model type, for guards kept in our format)

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"{folder} is not a model folder (no config.json): pass the folder written by `hf-llama3 guard "
                "train` or a Llama Guard 3 checkpoint folder."
            )
        config = read_guard_config(folder)
        model = AutoModelForCausalLM.from_pretrained(folder)
        if device is not None:
            model = model.to(device)
        return cls(
            model,
            load_guard_tokenizer(folder),
            policy=policy or SafetyPolicy.from_config(config.get("policy")),
            threshold=config.get("threshold", DEFAULT_THRESHOLD) if threshold is None else threshold,
            with_descriptions=bool(config.get("with_descriptions", False)),
            **kwargs,
        )

    def prompt(self, messages: Sequence[Mapping[str, Any]], check: str = "auto") -> str:
        """The guard prompt for one conversation (see :func:`training.safety.prompt.render_guard_prompt`)."""
        return render_guard_prompt(messages, check, self.policy, self.with_descriptions)

    @torch.no_grad()
    def _forward_at(self, rows: list[list[int]], positions: list[list[int]]) -> list[torch.Tensor]:
        """Log-probabilities ``[len(positions[i]), vocab]`` at the given positions of each right-padded row."""
        model = self.model
        device = next(model.parameters()).device
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long, device=device)
        attention_mask = torch.zeros_like(input_ids)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row, device=device)
            attention_mask[i, : len(row)] = 1
        base = getattr(model, model.base_model_prefix)
        hidden = base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        head = model.get_output_embeddings()
        out = []
        for i, pos in enumerate(positions):
            logits = head(hidden[i, pos]).float()
            out.append(torch.log_softmax(logits, dim=-1))
        return out

    def score(
        self, conversations: Sequence[Sequence[Mapping[str, Any]]], check: str = "auto"
    ) -> list[tuple[float, dict[str, float]]]:
        """``(P(unsafe), {code: P(unsafe) * P(code | unsafe)})`` for each conversation."""
        prompts = [self._encode(self.prompt(messages, check)) for messages in conversations]
        results: list[tuple[float, dict[str, float]]] = []
        codes = list(self._code_ids)
        code_ids = torch.tensor([self._code_ids[c] for c in codes])
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start : start + self.batch_size]
            rows = [p + self._head for p in batch]
            # Logits at position t predict token t+1: the first answer token follows prompt + "\n\n".
            positions = [[len(p) + self._unsafe_index - 1, len(r) - 1] for p, r in zip(batch, rows)]
            for logp in self._forward_at(rows, positions):
                p_unsafe = float(logp[0, self._unsafe_id].exp())
                p_codes = torch.softmax(logp[1, code_ids.to(logp.device)], dim=-1).tolist()
                results.append((p_unsafe, {c: p_unsafe * p for c, p in zip(codes, p_codes)}))
        return results

    @torch.no_grad()
    def _generate_categories(self, prompts: list[list[int]], max_new_tokens: int = 16) -> list[list[str]]:
        """Greedy category lines after ``prompt + "\\n\\nunsafe\\n"``, parsed into policy codes."""
        model = self.model
        device = next(model.parameters()).device
        start = self._head[:-1]  # "\n\nunsafe\n"
        out: list[list[str]] = []
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self._stop_ids[0]
        for prompt in prompts:
            ids = torch.tensor([prompt + start], device=device)
            sequences = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                eos_token_id=self._stop_ids,
                pad_token_id=pad,
            )
            generated = [t for t in sequences[0, ids.shape[1] :].tolist() if t not in self._stop_ids]
            text = self.tokenizer.decode(generated)
            codes = [c for c in dict.fromkeys(re.findall(r"S\d+", text.split("\n")[0])) if c in self.policy]
            out.append(codes)
        return out

    def classify(
        self, conversations: Sequence[Sequence[Mapping[str, Any]]], check: str = "auto", threshold: float | None = None
    ) -> list[GuardVerdict]:
        """Verdicts for ``conversations``: unsafe when P(unsafe) >= ``threshold`` (default: the guard's)."""
        threshold = self.threshold if threshold is None else threshold
        scored = self.score(conversations, check)
        unsafe_rows = [i for i, (p, _) in enumerate(scored) if p >= threshold]
        prompts = [self._encode(self.prompt(conversations[i], check)) for i in unsafe_rows]
        named = dict(zip(unsafe_rows, self._generate_categories(prompts)))
        verdicts = []
        for i, (p_unsafe, category_scores) in enumerate(scored):
            categories = named.get(i, [])
            if i in named and not categories:  # nothing parseable: the most likely category
                categories = [max(category_scores, key=category_scores.get)]
            verdicts.append(GuardVerdict(i in named, p_unsafe, categories, category_scores))
        return verdicts
