"""``hf-llama3 vision {init,train,convert,make-data,caption-lm}``: the vision adapter's command line [paper 7].

Also runs as ``python -m training.vision.cli ...`` (what ``torchrun -m`` needs for several processes).
"""

from __future__ import annotations

import argparse
import sys

from hf_llama3.cli_types import positive_int

from .build import add_init_arguments, run_init
from .meta import add_convert_arguments, run_convert
from .train import add_train_arguments, run_train


def _run_make_data(args: argparse.Namespace) -> int:
    from .data import synthetic_rows, write_image_folder

    dst = write_image_folder(synthetic_rows(args.rows, args.seed), args.dst, overwrite=args.overwrite)
    print(f"wrote {args.rows} synthetic image-text rows to {dst}")
    return 0


def _run_caption_lm(args: argparse.Namespace) -> int:
    from .caption_lm import train_caption_language_model

    dst = train_caption_language_model(
        args.dst, steps=args.steps, preset=args.preset, seed=args.seed, overwrite=args.overwrite
    )
    print(f"wrote a {args.preset} Llama 3 trained on synthetic captions (text only) to {dst}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-llama3 vision", description="Vision adapter on a frozen Llama 3 [7].")
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="build a stock mllama folder from a text checkpoint")
    add_init_arguments(init)
    init.set_defaults(run=run_init)
    train = sub.add_parser("train", help="train the adapter (encoder + cross-attention) with the text model frozen")
    add_train_arguments(train)
    train.set_defaults(run=run_train)
    convert = sub.add_parser("convert", help="Meta's llama_models multimodal layout <-> mllama folder")
    add_convert_arguments(convert)
    convert.set_defaults(run=run_convert)
    make_data = sub.add_parser("make-data", help="write the synthetic shapes/colours/counts image-text set")
    make_data.add_argument("dst")
    make_data.add_argument("--rows", type=positive_int, default=512)
    make_data.add_argument("--seed", type=int, default=0)
    make_data.add_argument("--overwrite", action="store_true")
    make_data.set_defaults(run=_run_make_data)
    caption_lm = sub.add_parser("caption-lm", help="a tiny text Llama 3 trained on the synthetic captions (demo)")
    caption_lm.add_argument("dst")
    caption_lm.add_argument("--steps", type=positive_int, default=80)
    caption_lm.add_argument("--preset", default="tiny")
    caption_lm.add_argument("--seed", type=int, default=0)
    caption_lm.add_argument("--overwrite", action="store_true")
    caption_lm.set_defaults(run=_run_caption_lm)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``hf-llama3 vision``; errors in the inputs surface as ValueError (exit 2 via hf_llama3.cli)."""
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    from hf_llama3.cli import main as cli_main

    sys.exit(cli_main(["vision", *sys.argv[1:]]))
