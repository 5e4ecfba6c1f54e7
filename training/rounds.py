"""Iterative post-training rounds [paper 4.1.6]: reward model, rejection sampling, SFT, preferences, DPO, averaging.

The paper runs 6 rounds; each collects new preference and SFT data with the latest models. One round here:

1. ``reward``: a reward model trained from the pre-trained checkpoint on all preference data so far [4.1.2];
2. ``rejection_sampling``: K samples per prompt from the latest policy, best by reward kept as SFT data [4.2.2];
   then the recipe's ``post_data`` steps (quality control, long-context rows, ...) under ``post_data/<step>``
   [4.2.3, 4.3] (:mod:`training.rounds_post_data`);
3. ``sft``: the pre-trained checkpoint fine-tuned on those samples (plus the user's SFT data), or on the rows the
   last post-data step wrote [4.1.3];
4. ``preferences``: new pairs from the latest model, its samples ranked by the reward model (the stand-in for human
   annotators), or the round's user-supplied annotation file [4.1.6];
5. ``dpo``: DPO from the SFT model on the newest preference batch, once per seed in ``dpo_seeds`` [4.1.4];
6. ``policy``: the DPO models averaged [4.1.5] (a copy when there is one);
7. ``evaluation``: mean reward of the new policy's greedy answers on held-out prompts and its win rate against the
   previous policy, both judged by this round's reward model.

Every step writes its artifact under ``output_dir/round_<r>/<step>`` atomically and then a ``DONE`` marker; a
rerun skips finished steps, so a killed run resumes where it stopped; ``fingerprint.json`` makes sure it resumes only
the same recipe and inputs, and a higher ``num_rounds`` continues a finished run (:mod:`training.rounds_fingerprint`).
``summary.json``, ``summary.md`` and ``rounds.png`` hold the per-round reward and win rate.

    hf-llama3 rounds --config recipes/tiny/rounds.yaml
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch

from training.post_cli import build_config, load_rows, load_stage_config, stage_parser
from training.rounds_post_data import (
    WHEN,
    PostDataEntry,
    check_post_data,
    ordered,
    rooted,
    rows_after,
    run_post_data_step,
    with_rows,
)

logger = logging.getLogger(__name__)

DONE = "DONE"


@dataclasses.dataclass
class RoundsConfig:
    """The iterative recipe [4.1.6].

    Args:
        base_model: The pre-trained checkpoint (with its tokenizer); the reward model and SFT start from it.
        prompts_path: Prompts for rejection sampling and preference collection.
        preference_path: Seed preference data (human annotations) for the first reward model.
        output_dir: Where every round's artifacts go.
        num_rounds: Rounds to run [4.1.6: the paper runs 6].
        eval_prompts_path: Held-out prompts for the per-round evaluation (default: ``prompts_path``).
        sft_extra_paths: User SFT data mixed with each round's rejection samples [4.1.3].
        annotation_paths: Per round, a preference file (prompt/chosen/rejected) that replaces the reward-model
            ranked pairs; missing or null entries use the reward model.
        preference_samples: Samples per prompt when collecting new pairs (best vs worst by reward).
        dpo_seeds: One DPO run per seed; more than one are averaged [4.1.5].
        kept_strengths: Preference strengths kept for reward modelling and DPO [4.2.1].
        eval_max_new_tokens: Length of the greedy answers scored in the evaluation.
        post_data: Post-training data steps run between rejection sampling and SFT, each ``{step, when, config,
            overrides}`` (:mod:`training.rounds_post_data`) [4.2.3, 4.3].
        reward, rejection_sampling, sft, dpo: Overrides for each stage's config (any field of
            ``Llama3RewardConfig``, ``RejectionSamplingConfig``, ``Llama3SFTConfig``, ``Llama3DPOConfig``).
    """

    base_model: str = ""
    prompts_path: str = ""
    preference_path: str = ""
    output_dir: str = ""
    num_rounds: int = 6
    eval_prompts_path: str | None = None
    sft_extra_paths: list[str] = dataclasses.field(default_factory=list)
    annotation_paths: list[str | None] = dataclasses.field(default_factory=list)
    preference_samples: int = 4
    dpo_seeds: list[int] = dataclasses.field(default_factory=lambda: [0])
    kept_strengths: list[str] = dataclasses.field(default_factory=lambda: ["significantly better", "better"])
    eval_max_new_tokens: int = 64
    post_data: list[PostDataEntry] = dataclasses.field(default_factory=list)
    reward: dict[str, Any] = dataclasses.field(
        default_factory=dict, metadata={"schema": "training.reward:Llama3RewardConfig"}
    )
    rejection_sampling: dict[str, Any] = dataclasses.field(
        default_factory=dict, metadata={"schema": "training.rejection_sampling:RejectionSamplingConfig"}
    )
    sft: dict[str, Any] = dataclasses.field(default_factory=dict, metadata={"schema": "training.sft:Llama3SFTConfig"})
    dpo: dict[str, Any] = dataclasses.field(default_factory=dict, metadata={"schema": "training.dpo:Llama3DPOConfig"})

    # Bounds the shared recipe loader checks (hf_llama3.recipe_loader) before the config is built.
    RECIPE_CONSTRAINTS: ClassVar[dict[str, dict[str, float]]] = {
        "num_rounds": {"min": 1},
        "preference_samples": {"min": 2},
        "dpo_seeds": {"min": 0},
        "eval_max_new_tokens": {"min": 1},
    }

    def __post_init__(self) -> None:
        for name in ("base_model", "prompts_path", "preference_path", "output_dir"):
            if not getattr(self, name):
                raise ValueError(f"{name} is required for the rounds recipe.")
        if self.num_rounds < 1:
            raise ValueError(f"num_rounds must be >= 1, got {self.num_rounds}.")
        if not self.dpo_seeds:
            raise ValueError("dpo_seeds needs at least one seed.")
        if self.preference_samples < 2:
            raise ValueError("preference_samples must be >= 2 to rank a pair.")
        for path in (self.base_model, self.prompts_path, self.preference_path, *self.sft_extra_paths):
            if not Path(path).exists():
                raise FileNotFoundError(f"{path} does not exist (set in the rounds config).")
        check_post_data(self.post_data, self.base_model)


def run_step(folder: Path, fn: Callable[[Path], Any]) -> Path:
    """Run ``fn(folder)`` unless ``folder`` holds a ``DONE`` marker; write the marker after it succeeds."""
    if (folder / DONE).exists():
        logger.info("skip %s (done)", folder)
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    fn(folder)
    (folder / DONE).write_text("ok\n", encoding="utf-8")
    return folder


class RoundsRunner:
    """Runs the rounds of a ``RoundsConfig``; every step is skipped when its ``DONE`` marker exists."""

    def __init__(self, config: RoundsConfig) -> None:
        from training.post_cli import StageInputs, load_stage_tokenizer

        self.config = config
        self.root = Path(config.output_dir)
        self.tokenizer = load_stage_tokenizer(StageInputs(model_name_or_path=config.base_model))

    def round_dir(self, r: int) -> Path:
        return self.root / f"round_{r}"

    def policy_before(self, r: int) -> str:
        """The latest policy entering round ``r``: the previous round's, or the pre-trained model."""
        return str(self.round_dir(r - 1) / "policy") if r > 0 else self.config.base_model

    def preference_files(self, r: int) -> list[str]:
        """Preference data available to round ``r``'s reward model: the seed data and every earlier round's pairs."""
        return [self.config.preference_path] + [
            str(self.round_dir(k) / "preferences" / "preferences.jsonl") for k in range(r)
        ]

    def run(self) -> list[dict[str, Any]]:
        """Run every round not yet done; a rerun of another recipe or inputs in ``output_dir`` is refused first."""
        from training.rounds_fingerprint import check_rounds_run

        check_rounds_run(self.config)
        for r in range(self.config.num_rounds):
            self.run_round(r)
        return self.write_summary()

    def run_round(self, r: int) -> None:
        folder = self.round_dir(r)
        logger.info("round %d: %s", r, folder)
        run_step(folder / "reward", lambda out: self.train_reward(r, out))
        run_step(folder / "rejection_sampling", lambda out: self.sample(r, out, self.policy_before(r)))
        run_step(folder / "sft", lambda out: self.train_sft(r, out))
        run_step(folder / "preferences", lambda out: self.collect_preferences(r, out))
        dpo_dirs = [folder / f"dpo_seed{seed}" for seed in self.config.dpo_seeds]
        for seed, out in zip(self.config.dpo_seeds, dpo_dirs):
            run_step(out, lambda out, seed=seed: self.train_dpo(r, out, seed))
        run_step(folder / "policy", lambda out: self.average(out, [d / "final" for d in dpo_dirs]))
        run_step(folder / "evaluation", lambda out: self.evaluate(r, out))

    # -- stages --------------------------------------------------------------------------------------------------

    def _stage_config(self, cls: type, overrides: dict[str, Any], out: Path, **extra: Any):
        """A stage's config: the recipe's overrides for it, then this step's inputs; it exports to ``out/final``."""
        return build_config(cls, {**overrides, **extra, "output_dir": str(out)})

    def train_reward(self, r: int, out: Path) -> None:
        """[4.1.2] on every preference file so far (the seed data and each earlier round's pairs)."""
        from training.reward import Llama3RewardConfig, train

        first, *rest = self.preference_files(r)
        config = self._stage_config(
            Llama3RewardConfig,
            self.config.reward,
            out,
            model_name_or_path=self.config.base_model,
            dataset_path=first,
            extra_dataset_paths=rest,
            kept_strengths=list(self.config.kept_strengths),
        )
        train(config, self.tokenizer, resume=False)

    def _rejection_config(self, out: Path, policy: str, reward_model: str, **extra: Any):
        from training.rejection_sampling import RejectionSamplingConfig

        values = {**self.config.rejection_sampling, **extra}
        values |= {"policy_path": policy, "reward_model_path": reward_model, "output_dir": str(out)}
        values.setdefault("prompts_path", self.config.prompts_path)
        return build_config(RejectionSamplingConfig, values)

    def sample(self, r: int, out: Path, policy: str) -> None:
        from training.rejection_sampling import rejection_sample

        reward_model = str(self.round_dir(r) / "reward" / "final")
        rejection_sample(self._rejection_config(out, policy, reward_model, seed=r), tokenizer=self.tokenizer)

    def prepare_sft_rows(self, r: int) -> list[str]:
        """Run round ``r``'s post-data steps (each skipped when done) and return the files its SFT trains on: the
        rejection samples, through the ``after_rejection_sampling`` steps, plus the user's SFT data, through the
        ``before_sft`` steps [4.2.3, 4.3]."""
        models = {
            "policy": self.policy_before(r),
            "reward_model": str(self.round_dir(r) / "reward" / "final"),
            "base_model": self.config.base_model,
        }
        entries = self.config.post_data
        rows = [str(self.round_dir(r) / "rejection_sampling" / "sft.jsonl")]
        for when in WHEN:
            if when == "before_sft":
                rows += list(self.config.sft_extra_paths)
            for index, entry in ordered(entries, when):
                folder = self.round_dir(r) / "post_data" / entry.step
                run_step(folder, lambda out, e=entry, i=index, rows=rows: run_post_data_step(e, i, out, rows, models))
                rows = rows_after(entry, folder, rows)
        return with_rows(rows, f"{self.round_dir(r)}: SFT data") if entries else rows

    def train_sft(self, r: int, out: Path) -> None:
        """[4.1.3] from the pre-trained checkpoint on this round's rejection samples and the user's SFT data, after
        the recipe's post-data steps (:meth:`prepare_sft_rows`, run first)."""
        from training.sft import Llama3SFTConfig, train

        first, *rest = self.prepare_sft_rows(r)
        config = self._stage_config(
            Llama3SFTConfig,
            self.config.sft,
            out,
            model_name_or_path=self.config.base_model,
            dataset_path=first,
            extra_dataset_paths=rest,
        )
        train(config, self.tokenizer, resume=False)

    def collect_preferences(self, r: int, out: Path) -> None:
        """New pairs from the latest (SFT) model ranked by the reward model, or the round's annotation file."""
        annotations = self.config.annotation_paths[r] if r < len(self.config.annotation_paths) else None
        if annotations:
            shutil.copy2(annotations, out / "preferences.jsonl")
            return
        from training.rejection_sampling import rejection_sample

        config = self._rejection_config(
            out,
            str(self.round_dir(r) / "sft" / "final"),
            str(self.round_dir(r) / "reward" / "final"),
            num_samples=self.config.preference_samples,
            seed=1000 + r,
        )
        rejection_sample(config, tokenizer=self.tokenizer)

    def train_dpo(self, r: int, out: Path, seed: int) -> None:
        """[4.1.4] from this round's SFT model on its newest preferences (their strength column kept [4.2.1])."""
        from training.dpo import Llama3DPOConfig, train

        config = self._stage_config(
            Llama3DPOConfig,
            self.config.dpo,
            out,
            model_name_or_path=str(self.round_dir(r) / "sft" / "final"),
            dataset_path=str(self.round_dir(r) / "preferences" / "preferences.jsonl"),
            kept_strengths=list(self.config.kept_strengths),
            seed=seed,
        )
        train(config, self.tokenizer, resume=False)

    def average(self, out: Path, checkpoints: list[Path]) -> None:
        from hf_llama3.checkpoint_io import atomic_output_dir
        from training.averaging import average_checkpoints

        # The step folder is the model folder: filled through a staging folder, so it is complete or absent.
        with atomic_output_dir(out, overwrite=True) as staging:
            if len(checkpoints) == 1:
                shutil.copytree(checkpoints[0], staging, dirs_exist_ok=True)
            else:
                average_checkpoints(checkpoints, staging, overwrite=True)

    @torch.no_grad()
    def evaluate(self, r: int, out: Path) -> None:
        """Mean reward of greedy answers and win rate against the previous policy, judged by round r's RM."""
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        from evaluation.io import write_json
        from hf_llama3 import encode_dialog, stop_token_ids
        from training.rejection_sampling import prompt_messages, sample_responses, score_samples

        rows = load_rows(self.config.eval_prompts_path or self.config.prompts_path)
        prompts = [
            encode_dialog(self.tokenizer, prompt_messages(row, i), add_generation_prompt=True).input_ids
            for i, row in enumerate(rows)
        ]
        reward_model = AutoModelForSequenceClassification.from_pretrained(self.round_dir(r) / "reward" / "final")
        eot = self.tokenizer.convert_tokens_to_ids("<|eot_id|>")
        stops = stop_token_ids(self.tokenizer)

        def mean_scores(policy_path: str) -> list[float]:
            policy = AutoModelForCausalLM.from_pretrained(policy_path)
            answers = sample_responses(
                policy,
                prompts,
                1,
                self.config.eval_max_new_tokens,
                temperature=0,
                stop_ids=stops,
                pad_id=self.tokenizer.pad_token_id,
            )
            closed = [[a if a and a[-1] in stops else [*a, eot] for a in per_prompt] for per_prompt in answers]
            return [s[0] for s in score_samples(reward_model, prompts, closed)]

        new, old = mean_scores(str(self.round_dir(r) / "policy")), mean_scores(self.policy_before(r))
        wins = sum(n > o for n, o in zip(new, old)) + 0.5 * sum(n == o for n, o in zip(new, old))
        result = {
            "round": r,
            "mean_reward": sum(new) / len(new),
            "previous_mean_reward": sum(old) / len(old),
            "win_rate_vs_previous": wins / len(new),
            "preference_pairs": sum(len(load_rows(p)) for p in self.preference_files(r + 1)),
            "sft_rows": len(load_rows(self.round_dir(r) / "rejection_sampling" / "sft.jsonl")),
        }
        write_json(out / "metrics.json", result)

    def write_summary(self) -> list[dict[str, Any]]:
        """``summary.json``, ``summary.md`` (a table) and ``rounds.png`` over every finished round."""
        from evaluation.io import write_json
        from hf_llama3.checkpoint_io import atomic_output_file

        rows = []
        for r in range(self.config.num_rounds):
            metrics = self.round_dir(r) / "evaluation" / "metrics.json"
            if metrics.exists():
                rows.append(json.loads(metrics.read_text(encoding="utf-8")))
        write_json(self.root / "summary.json", rows)
        lines = [
            "| round | mean reward | previous policy | win rate vs previous | preference pairs | SFT rows |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {m['round']} | {m['mean_reward']:.4f} | {m['previous_mean_reward']:.4f} | "
            f"{m['win_rate_vs_previous']:.2f} | {m['preference_pairs']} | {m['sft_rows']} |"
            for m in rows
        ]
        with atomic_output_file(self.root / "summary.md") as tmp:
            tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        plot_rounds(rows, self.root / "rounds.png")
        return rows


def plot_rounds(rows: list[dict[str, Any]], path: Path) -> None:
    """Mean reward (left axis) and win rate against the previous policy (right axis) per round."""
    from matplotlib.figure import Figure

    from hf_llama3.checkpoint_io import atomic_output_file

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    rounds = [m["round"] for m in rows]
    ax.plot(rounds, [m["mean_reward"] for m in rows], marker="o", color="tab:blue", label="mean reward")
    ax.set_xlabel("round")
    ax.set_ylabel("mean reward (this round's RM)", color="tab:blue")
    twin = ax.twinx()
    twin.plot(rounds, [m["win_rate_vs_previous"] for m in rows], marker="s", color="tab:orange")
    twin.set_ylabel("win rate vs previous policy", color="tab:orange")
    twin.set_ylim(0, 1)
    ax.set_title("Post-training rounds [paper 4.1.6]")
    with atomic_output_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")


def demo_round(base_model: str | Path, output_dir: str | Path, num_rounds: int = 1) -> list[dict[str, Any]]:
    """The tiny recipe (``recipes/tiny/rounds.yaml``) on ``base_model`` for ``num_rounds`` rounds (``make demo``)."""
    from training.post_cli import read_yaml

    repo = Path(__file__).resolve().parents[1]
    values = read_yaml(repo / "recipes" / "tiny" / "rounds.yaml")
    for key in ("prompts_path", "preference_path"):
        values[key] = str(repo / values[key])
    values["sft_extra_paths"] = [str(repo / p) for p in values["sft_extra_paths"]]
    values["post_data"] = [rooted(entry, repo) for entry in values.get("post_data", [])]
    values |= {"base_model": str(base_model), "output_dir": str(output_dir), "num_rounds": num_rounds}
    return RoundsRunner(build_config(RoundsConfig, values, source="recipes/tiny/rounds.yaml")).run()


def main(argv: list[str]) -> int:
    """``hf-llama3 rounds``: run (or resume) the iterative post-training recipe [4.1.6]."""
    args = stage_parser(
        "rounds", "Iterative post-training rounds (paper 4.1.6); reruns resume.", RoundsConfig
    ).parse_args(argv)
    config = load_stage_config(RoundsConfig, args)
    rows = RoundsRunner(config).run()
    print((Path(config.output_dir) / "summary.md").read_text(encoding="utf-8"), end="")
    return 0 if len(rows) == config.num_rounds else 1
