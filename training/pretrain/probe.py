"""Annealing as a data probe [3.1.3]: judge a small dataset by annealing a partly trained model on it.

From ``probe.checkpoint`` two annealing runs are made with the recipe's ``anneal`` settings: ``control`` on the
default annealing mix, and ``candidate`` with ``probe.weight`` (paper: 30%) of the new source and the default mix
scaled to the rest (70%). Both continue the checkpoint's data stream. The report gives the held-out loss of every
source before annealing and after each run, and the candidate-minus-control delta (negative: the new data helps).
The paper reads benchmark scores (GSM8k, MATH) instead of losses; ``hf-llama3 eval benchmarks`` on the two exports
does that.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch.distributed as dist

from .anneal import AnnealStage
from .config import PretrainRecipe
from .runner import Runner

logger = logging.getLogger(__name__)


def probe_weights(default: dict[str, float], source: str, weight: float) -> dict[str, float]:
    """``weight`` on ``source`` and ``1 - weight`` on the normalised ``default`` mix."""
    total = sum(default.values())
    mix = {name: (1 - weight) * w / total for name, w in default.items()}
    mix[source] = mix.get(source, 0.0) + weight
    return mix


def _before(runner: Runner, path: Path) -> dict[str, float]:
    """Held-out losses of the checkpoint, measured by the first arm before it trains and kept for resumed runs."""
    if path.is_file():
        return json.loads(path.read_text())
    losses = runner.evaluate()
    if dist.get_rank() == 0:
        path.write_text(json.dumps(losses), encoding="utf-8")
    dist.barrier()
    return losses


def run_probe(recipe: PretrainRecipe, tokenizer: Any = None) -> dict[str, Any]:
    """Run both arms (each resumable on its own) and write ``<output_dir>/probe_report.json`` on rank 0."""
    probe = recipe.probe
    arms = {
        "control": recipe.anneal.weights,
        "candidate": probe_weights(recipe.anneal.weights, probe.source, probe.weight),
    }
    report: dict[str, Any] = {"checkpoint": probe.checkpoint, "source": probe.source, "weight": probe.weight}
    for arm, weights in arms.items():
        stage = AnnealStage(recipe.anneal, weights=weights, name="anneal")
        runner = Runner(recipe, [stage], Path(recipe.output_dir) / "probe" / arm, probe.checkpoint, tokenizer)
        if "before" not in report:
            report["before"] = _before(runner, Path(recipe.output_dir) / "probe" / "before.json")
        runner.run()
        report[arm] = {"weights": weights, "eval_loss": runner.evaluate()}
    report["delta"] = {
        name: report["candidate"]["eval_loss"][name] - report["control"]["eval_loss"][name]
        for name in report["control"]["eval_loss"]
    }
    if dist.get_rank() == 0:
        path = Path(recipe.output_dir) / "probe_report.json"
        path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        logger.info("data probe: eval-loss delta (candidate - control) %s -> %s", report["delta"], path)
    return report
