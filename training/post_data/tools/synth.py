"""``hf-llama3 post-data tools``: synthetic tool-use dialogs with real tool execution [4.3.5].

The paper's single- and multi-step tool datasets [4.3.5] are made this way: synthetic prompts that need a tool,
the model's tool calls executed and their outputs added to its context, then the final answer ("system prompt, user
prompt, tool call, tool output, final answer"), and "we also filter around 30% this dataset to remove tool calls
that cannot be executed or other formatting issues". Its tool preferences come from annotators choosing between
two assistant messages, and it reports no gain from rejection sampling on tool benchmarks; here, without
annotators, the best and the worst of K scored trajectories stand in for that preference (a project choice).

For every prompt the policy model runs ``num_trajectories`` tool-use loops
(:func:`training.post_data.tools.loop.run_tool_loops`) with the real tools of
:func:`training.post_data.tools.builtin.build_registry`. Each trajectory is scored by the reward model when one is
given (the whole tool dialog after the prompt is the response), else by tool success (``(ok calls + 1) / (calls +
1)`` for an answered trajectory, 0 otherwise). A trajectory is kept when it was answered and none of its calls
failed (``keep_tool_errors`` lifts the second condition); the best kept trajectory of a prompt becomes an SFT row
(``messages`` with the ``tool_calls`` and ``ipython`` turns, plus ``builtin_tools``/``tools``, the options that render
it), and it with the worst one (a dropped trajectory when there is one, else the lowest-scored kept one if strictly
lower) becomes a DPO pair. The report counts outcomes and says why each trajectory was dropped
(``unparseable_call``, ``tool_error``, ``out_of_tokens``, ``step_limit``).

    hf-llama3 post-data tools --config recipes/tiny/tools.yaml
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from hf_llama3.recipe_loader import bounds
from training.post_data.tools.loop import Policy, Trajectory, run_tool_loops
from training.post_data.tools.registry import ToolRegistry

DROP_REASONS = ("unparseable_call", "tool_error", "out_of_tokens", "step_limit")


@dataclasses.dataclass
class ToolsConfig:
    """Args:
    prompts_path: prompts, one JSON row each with ``prompt`` (a string or chat messages) or ``messages``.
    output_path: the SFT rows (``.jsonl``); the report goes beside it as ``<name>.report.json``.
    dpo_output_path: the DPO pairs (``.jsonl``); None: ``<name>.dpo.jsonl`` beside ``output_path``.
    model_path: the causal LM that writes the tool calls and answers.
    tokenizer_path: tokenizer folder; None: the model's folder, else the real Llama 3 tokenizer.
    reward_model_path: reward model that scores trajectories; None: tool success scores them.
    tools: built-in tool names (code_interpreter, brave_search, wolfram_alpha) and ``module:function`` custom tools.
    search_index: JSON-lines documents ``{title, url, text}`` for ``brave_search`` (search_backend local).
    search_backend: ``local`` (BM25 over search_index) or ``brave`` (Brave's API, BRAVE_SEARCH_API_KEY).
    math_backend: ``sympy`` (in the sandbox) or ``wolfram`` (Wolfram Alpha's API, WOLFRAM_ALPHA_API_KEY).
    tool_prompt_format: how custom tools are described and called: ``json`` or ``function_tag``.
    system_prompt: a system message added to prompts that have none.
    date_string: "Today Date" of the system turn (e.g. "26 July 2024"); None leaves the date lines out.
    num_trajectories: trajectories per prompt (K).
    max_steps: assistant messages per trajectory before it is stopped (step_limit).
    max_new_tokens: longest assistant message.
    temperature: sampling temperature (0: greedy).
    top_p: nucleus sampling mass.
    seed: sampling seed.
    keep_tool_errors: keep answered trajectories even when a tool call failed.
    sandbox_cpu_seconds: CPU limit of each code-interpreter and math cell.
    sandbox_wall_seconds: wall-clock limit of each cell.
    generation_backend: ``auto``, ``prefix_sharing``, ``continuous_batching`` or ``vllm`` (training.generation).
    device: where the models run: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    """

    prompts_path: str = ""
    output_path: str = ""
    dpo_output_path: str | None = None
    model_path: str = ""
    tokenizer_path: str | None = None
    reward_model_path: str | None = None
    # [4.3.5] "Search engine ... Python interpreter ... Mathematical computational engine".
    tools: list[str] = dataclasses.field(default_factory=lambda: ["code_interpreter", "brave_search", "wolfram_alpha"])
    search_index: str | None = None
    search_backend: Literal["local", "brave"] = "local"
    math_backend: Literal["sympy", "wolfram"] = "sympy"
    tool_prompt_format: Literal["json", "function_tag"] = "json"
    system_prompt: str | None = None
    date_string: str | None = None
    num_trajectories: int = dataclasses.field(default=4, metadata=bounds("", min=1))
    max_steps: int = dataclasses.field(default=4, metadata=bounds("", min=1))
    max_new_tokens: int = dataclasses.field(default=256, metadata=bounds("", min=1))
    # Meta's reference sampling defaults (llama_models/llama3/generation.py).
    temperature: float = dataclasses.field(default=0.6, metadata=bounds("", min=0))
    top_p: float = dataclasses.field(default=0.9, metadata=bounds("", gt=0, max=1))
    seed: int = dataclasses.field(default=0, metadata=bounds("", min=0))
    keep_tool_errors: bool = False
    sandbox_cpu_seconds: float = dataclasses.field(default=10.0, metadata=bounds("", gt=0))
    sandbox_wall_seconds: float = dataclasses.field(default=20.0, metadata=bounds("", gt=0))
    generation_backend: Literal["auto", "prefix_sharing", "continuous_batching", "vllm"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def __post_init__(self) -> None:
        for key in ("prompts_path", "output_path", "model_path"):
            if not getattr(self, key):
                raise ValueError(f"tools: {key} is not set; give it in the recipe or with --set {key}=...")
        if not self.tools:
            raise ValueError("tools: the tools list is empty; name built-in tools or module:function custom tools.")

    @property
    def dpo_path(self) -> Path:
        output = Path(self.output_path)
        return Path(self.dpo_output_path) if self.dpo_output_path else output.with_name(output.stem + ".dpo.jsonl")


def read_prompts(path: str, system_prompt: str | None = None) -> list[list[dict[str, Any]]]:
    """The prompt messages of every row (``prompt`` string or messages, or ``messages`` up to the last user turn);
    a row that is neither is refused naming the file, row and field."""
    from training.post_data.curate import read_jsonl

    prompts = []
    for number, row in read_jsonl(path):
        value = row.get("prompt", row.get("messages")) if isinstance(row, dict) else None
        if isinstance(value, str) and value.strip():
            messages = [{"role": "user", "content": value}]
        elif isinstance(value, list) and any(isinstance(m, dict) and m.get("role") == "user" for m in value):
            last_user = max(i for i, m in enumerate(value) if isinstance(m, dict) and m.get("role") == "user")
            messages = [dict(m) for m in value[: last_user + 1]]
        else:
            raise ValueError(
                f"{path}: row {number}: field 'prompt' must be a string or messages with a user turn "
                "(or give 'messages')."
            )
        if system_prompt and messages[0].get("role") != "system":
            messages.insert(0, {"role": "system", "content": system_prompt})
        prompts.append(messages)
    if not prompts:
        raise ValueError(f"{path}: no prompts; give one JSON row with 'prompt' per line.")
    return prompts


def drop_reason(trajectory: Trajectory, keep_tool_errors: bool = False) -> str | None:
    """Why a trajectory is not kept (one of :data:`DROP_REASONS`), or None when it is."""
    if trajectory.outcome != "answered":
        return trajectory.outcome
    if trajectory.tool_errors and not keep_tool_errors:
        return "tool_error"
    return None


def tool_success(trajectory: Trajectory) -> float:
    """``(ok calls + 1) / (calls + 1)`` for an answered trajectory, 0 otherwise."""
    if trajectory.outcome != "answered":
        return 0.0
    return (len(trajectory.calls) - trajectory.tool_errors + 1) / (len(trajectory.calls) + 1)


def reward_model_scores(
    reward_model: Any, tokenizer: Any, trajectories: list[Trajectory], options: dict[str, Any]
) -> list[float]:
    """The reward model's score of each trajectory: the prompt, then everything the loop added as the response."""
    from hf_llama3 import encode_dialog
    from training.rejection_sampling import score_samples

    prompt_ids, sample_ids = [], []
    for trajectory in trajectories:
        prompt = trajectory.messages[: trajectory.prompt_length]
        head = encode_dialog(tokenizer, prompt, add_generation_prompt=True, **options).input_ids
        full = encode_dialog(tokenizer, trajectory.messages, **options).input_ids
        prompt_ids.append(head)
        sample_ids.append([full[len(head) :]])
    return [scores[0] for scores in score_samples(reward_model, prompt_ids, sample_ids)]


def select(
    group: list[Trajectory], scores: list[float], keep_tool_errors: bool
) -> tuple[int | None, int | None, list[str | None]]:
    """(best kept trajectory, its DPO partner, each trajectory's drop reason) for one prompt's trajectories."""
    reasons = [drop_reason(t, keep_tool_errors) for t in group]
    kept = [k for k, reason in enumerate(reasons) if reason is None]
    if not kept:
        return None, None, reasons
    best = max(kept, key=lambda k: (scores[k], -k))
    dropped = [k for k, reason in enumerate(reasons) if reason is not None]
    if dropped:
        return best, min(dropped, key=lambda k: (scores[k], k)), reasons
    worst = min(kept, key=lambda k: (scores[k], k))
    return best, (worst if scores[worst] < scores[best] else None), reasons


def synthesize(
    policy: Policy,
    registry: ToolRegistry,
    prompts: list[list[dict[str, Any]]],
    *,
    num_trajectories: int,
    max_steps: int,
    keep_tool_errors: bool = False,
    score: Any = None,
    scored_by: str = "tool_success",
    date_string: str | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """(SFT rows, DPO pairs, report) from ``num_trajectories`` loops per prompt; ``score`` maps a list of
    trajectories to scores (None: :func:`tool_success`)."""
    runs = [list(p) for p in prompts for _ in range(num_trajectories)]
    trajectories = run_tool_loops(policy, runs, registry, max_steps)
    scores = score(trajectories) if score is not None else [tool_success(t) for t in trajectories]
    options = {"builtin_tools": registry.builtin_names, "tools": registry.custom_definitions}
    render = {"tool_prompt_format": registry.tool_prompt_format, "date_string": date_string}
    sft_rows, pairs, dropped = [], [], []
    no_pair = Counter()
    for p, prompt in enumerate(prompts):
        group = trajectories[p * num_trajectories : (p + 1) * num_trajectories]
        group_scores = scores[p * num_trajectories : (p + 1) * num_trajectories]
        best, worst, reasons = select(group, group_scores, keep_tool_errors)
        for k, (trajectory, reason) in enumerate(zip(group, reasons)):
            if reason is not None:
                detail = trajectory.detail or "; ".join(c.output.splitlines()[0] for c in trajectory.calls if not c.ok)
                dropped.append({"prompt": p, "trajectory": k, "why": reason, "detail": detail})
        if best is None:
            no_pair["no trajectory kept"] += 1
            continue
        chosen = group[best]
        meta = {
            "score": group_scores[best],
            "scored_by": scored_by,
            "steps": chosen.steps,
            "calls": [c.name for c in chosen.calls],
        }
        sft_rows.append({"messages": chosen.messages, **options, **render, "tool_use": meta})
        if worst is None:
            no_pair["every kept trajectory scored the same"] += 1
            continue
        rejected = group[worst]
        pairs.append(
            {
                "prompt": prompt,
                "chosen": chosen.completion,
                "rejected": rejected.completion,
                **options,
                **render,
                "tool_use": {
                    "chosen_score": group_scores[best],
                    "rejected_score": group_scores[worst],
                    "rejected_outcome": reasons[worst] or "kept",
                    "scored_by": scored_by,
                },
            }
        )
    reasons_count = Counter(d["why"] for d in dropped)
    calls = Counter(c.name for t in trajectories for c in t.calls)
    failed_calls = Counter(c.name for t in trajectories for c in t.calls if not c.ok)
    report = {
        "prompts": len(prompts),
        "trajectories": len(trajectories),
        "scored_by": scored_by,
        "outcomes": dict(Counter(t.outcome for t in trajectories)),
        "kept_trajectories": len(trajectories) - len(dropped),
        "dropped_trajectories": {reason: reasons_count.get(reason, 0) for reason in DROP_REASONS},
        "sft_rows": len(sft_rows),
        "dpo_pairs": len(pairs),
        "prompts_without_pair": dict(no_pair),
        "tool_calls": dict(calls),
        "tool_errors": dict(failed_calls),
        "dropped": dropped,
    }
    return sft_rows, pairs, report


def run(config: ToolsConfig) -> dict[str, Any]:
    """Run the step from its config: read the prompts, build the tools, load the models, synthesize, write."""
    from transformers import AutoModelForSequenceClassification

    from training.generation.engine import resolve_device
    from training.post_cli import check_model_path
    from training.post_data.curate import load_causal_lm, report_path, write_jsonl, write_report
    from training.post_data.tools.builtin import build_registry, sandbox_limits
    from training.post_data.tools.loop import ModelPolicy

    prompts = read_prompts(config.prompts_path, config.system_prompt)  # before the model loads
    check_model_path(config.model_path, "model_path")
    if config.reward_model_path:
        check_model_path(config.reward_model_path, "reward_model_path")
    limits = sandbox_limits(cpu_seconds=config.sandbox_cpu_seconds, wall_seconds=config.sandbox_wall_seconds)
    registry = build_registry(
        config.tools,
        search_index=config.search_index,
        search_backend=config.search_backend,
        math_backend=config.math_backend,
        limits=limits,
        tool_prompt_format=config.tool_prompt_format,
    )
    device = resolve_device(config.device)
    model, tokenizer = load_causal_lm(config.model_path, config.tokenizer_path, str(device))
    policy = ModelPolicy(
        model.eval(),
        tokenizer,
        registry,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        seed=config.seed,
        date_string=config.date_string,
        backend=config.generation_backend,
    )
    score, scored_by = None, "tool_success"
    if config.reward_model_path:
        reward_model = AutoModelForSequenceClassification.from_pretrained(config.reward_model_path).to(device).eval()
        options = registry.dialog_options() | {"date_string": config.date_string}

        def score(trajectories: list[Trajectory]) -> list[float]:
            return reward_model_scores(reward_model, tokenizer, trajectories, options)

        scored_by = f"reward_model:{config.reward_model_path}"
    sft_rows, pairs, report = synthesize(
        policy,
        registry,
        prompts,
        num_trajectories=config.num_trajectories,
        max_steps=config.max_steps,
        keep_tool_errors=config.keep_tool_errors,
        score=score,
        scored_by=scored_by,
        date_string=config.date_string,
    )
    write_jsonl(config.output_path, sft_rows)
    write_jsonl(config.dpo_path, pairs)
    write_report(report_path(config.output_path), report)
    return report


def summary(report: dict[str, Any]) -> str:
    """The line ``hf-llama3 post-data tools`` prints: what was kept and dropped."""
    return (
        f"tools: {report['sft_rows']} SFT rows and {report['dpo_pairs']} DPO pairs from {report['trajectories']} "
        f"trajectories of {report['prompts']} prompts; dropped {report['dropped_trajectories']}"
    )
