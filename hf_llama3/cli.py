"""The `hf-llama3` console entry point.

Subcommands are named here as ``"module:function"`` strings and imported only when they run, so
``import hf_llama3`` never pulls in the training, data or evaluation packages (``hf_llama3`` must
work alone: it is what ``from_pretrained`` users and remote code load). Each target takes the
remaining argv and returns a process exit code.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

from hf_llama3.cli_errors import USER_ERRORS, CLIError, run_entry_point

__all__ = ["COMMANDS", "USER_ERRORS", "CLIError", "main"]

# name -> ("module:function", one-line help). Later stages add their line here.
COMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("hf_llama3.convert:main", "convert checkpoints between ours, stock HF Llama and Meta's layout"),
    "quantize": ("hf_llama3.quantize:main", "`quantize --fp8`: FP8 row-wise FFN weights, fbgemm_fp8 format [6.2]"),
    "demo": ("training.demo:main", "run the whole recipe on a tiny model (what `make demo` runs)"),
    "curate": ("data.cli:main", "curate WARC/HTML/JSONL/parquet into tokenized, mixed training shards [3.1]"),
    "train-quality": (
        "data.train_quality:main",
        "train the fastText / LLM-judged encoder quality classifiers [3.1.1]",
    ),
    # Post-training [paper 4] (training/reward.py, rejection_sampling.py, sft.py, dpo.py, averaging.py, rounds.py).
    "average": ("training.averaging:main", "average checkpoints (uniform or weighted), sharded safetensors [4.1.5]"),
    "reward": ("training.reward:main", "train a reward model on ranked 2-3 responses per prompt [4.1.2]"),
    "rejection-sample": (
        "training.rejection_sampling:main",
        "K samples per prompt scored by the reward model [4.2.2]",
    ),
    "sft": ("training.sft:main", "supervised fine-tuning, assistant-only loss, packed dialogs [4.1.3]"),
    "dpo": ("training.dpo:main", "DPO with formatting tokens masked and a 0.2 NLL term [4.1.4]"),
    "rounds": (
        "training.rounds:main",
        "iterative post-training rounds: RM, rejection sampling, SFT, DPO, average [4.1.6]",
    ),
    # Post-training data [4.2-4.3] (training/post_data/): curation, long-context synthesis.
    "post-data": (
        "training.post_data.cli:main",
        "`post-data {curate,long-context}`: make and clean post-training rows [4.2-4.3]",
    ),
    "chat": (
        "training.chat_cli:main",
        "`chat --model PATH --tools code_interpreter,brave_search,...`: multi-step tool use [4.3.5]",
    ),
    # Safety [5.4] (training/safety/): Llama Guard 3-style classifier, filter, VR/FRR.
    "guard": (
        "training.safety.cli:main",
        "`guard {train,classify,eval,chat-eval}`: Llama Guard 3-style safety classifier, VR/FRR [5.4]",
    ),
    # 4D-parallel pre-training engine and Nanotron bridge [3.3.2] (training/parallel/, training/nanotron/).
    "pretrain": (
        "training.pretrain.cli:main",
        "three-stage pre-training recipe: ramps, long context, annealing [3.4]",
    ),
    "plan": ("training.parallel.plan_cli:main", "layouts of a model on N GPUs: memory, step time, MFU [3.3.2]"),
    "nanotron-config": ("training.nanotron.config:main", "write a Nanotron YAML config for a model + parallel layout"),
    "tokenizer": ("hf_llama3.tokenizer_train:main", "`tokenizer train`: BPE in Llama 3's layout on your corpus [3.2]"),
    # Evaluation [3.2.1, 3.4.2, 5] (evaluation/; the IsoFLOPs sweep trains, so it enters through training/).
    "eval": (
        "evaluation.cli:eval_main",
        "`eval {needle,benchmarks,contamination}`: NIAH gate, lm-eval, n-gram overlap",
    ),
    "scaling-law": ("training.isoflops:main", "`scaling-law {sweep,fit,forecast,downstream}`: IsoFLOPs [3.2.1]"),
    # Vision adapter [7] (training/vision/): stock `mllama` folders on a frozen Llama 3.
    "vision": (
        "training.vision.cli:main",
        "`vision {init,train,convert,make-data,caption-lm}`: image encoder + cross-attention, frozen text [7]",
    ),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: hf-llama3 <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in sorted(COMMANDS.items())]
    lines += ["", "Run `hf-llama3 <command> --help` for a command's options."]
    return "\n".join(lines)


def _resolve(target: str) -> Callable[[list[str]], int]:
    module_name, _, function_name = target.partition(":")
    return getattr(importlib.import_module(module_name), function_name)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``hf-llama3 <command> ...`` to the command's ``main(argv)``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"hf-llama3: unknown command {name!r}.\n\n{_usage()}", file=sys.stderr)
        return 2
    return run_entry_point(f"hf-llama3 {name}", lambda: _resolve(COMMANDS[name][0])(rest))


if __name__ == "__main__":
    sys.exit(main())
