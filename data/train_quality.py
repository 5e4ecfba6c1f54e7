"""``hf-llama3 train-quality``: train the quality classifiers that ``quality:`` in a curation recipe applies.

    # fastText "would be referenced by Wikipedia" classifier [3.1.1]: positives vs negatives
    hf-llama3 train-quality fasttext --positives refs.jsonl --negatives random_web.warc.gz --output wiki.bin
    # the model is checked complete (size, reload) before success is printed; --overwrite replaces one
    # an LLM judge labels pages from a written rubric, a MiniLM encoder head learns the labels [3.1.1]
    hf-llama3 train-quality encoder --input pages.jsonl --judge path/to/causal-lm --output quality_encoder/

Inputs are anything the curation readers take (WARC, HTML folders, JSONL, parquet); HTML is extracted with
the same extractor as the pipeline, so the classifiers see the text they will score.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from data.extract import ExtractConfig, HtmlExtractor
from data.readers import InputReader, ReaderConfig
from hf_llama3.cli_types import positive_int

logger = logging.getLogger(__name__)


def read_texts(paths: list[str], limit: int | None = None) -> list[str]:
    """Extracted texts of the documents under ``paths`` (bad records and empty pages skipped)."""
    extractor = HtmlExtractor(ExtractConfig())
    texts = []
    for doc in InputReader(ReaderConfig(paths=paths)).run():
        if extractor.filter(doc) is True:
            texts.append(doc.text)
            if limit is not None and len(texts) >= limit:
                break
    if not texts:
        raise ValueError(f"no usable documents in {paths}.")
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hf-llama3 train-quality", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    ft = sub.add_parser("fasttext", help="fastText classifier: positives vs negatives")
    ft.add_argument("--positives", nargs="+", required=True)
    ft.add_argument("--negatives", nargs="+", required=True)
    ft.add_argument("--output", required=True, help="model file (.bin) for quality.fasttext_model")
    ft.add_argument("--epochs", type=positive_int, default=25)
    ft.add_argument(
        "--buckets", type=positive_int, default=2_000_000, help="hashed bigram rows (fastText's 2M: an ~800 MB model)"
    )
    ft.add_argument("--overwrite", action="store_true", help="replace an existing model at --output")
    enc = sub.add_parser("encoder", help="LLM-judge labels + sentence-encoder classifier")
    enc.add_argument("--input", nargs="+", required=True)
    enc.add_argument("--judge", required=True, help="causal LM checkpoint folder (ours or any transformers LM)")
    enc.add_argument(
        "--tokenizer", default=None, help="tokenizer for the judge (default: the checkpoint's, else Llama 3)"
    )
    enc.add_argument("--rubric", default=None, help="text file with the rubric prompt; {text} marks the page")
    enc.add_argument("--encoder", default=None, help="sentence-transformers model folder (default: offline MiniLM)")
    enc.add_argument("--max-docs", type=positive_int, default=2000)
    enc.add_argument("--output", required=True, help="folder for quality.encoder_classifier")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from data.fasttext_io import check_destination
    from data.quality import DEFAULT_RUBRIC, EncoderClassifier, judge_labels, train_fasttext_classifier

    if args.kind == "fasttext":
        check_destination(args.output, args.overwrite)  # refused before reading and training, not after
        positives, negatives = read_texts(args.positives), read_texts(args.negatives)
        path = train_fasttext_classifier(
            positives, negatives, args.output, epochs=args.epochs, buckets=args.buckets, overwrite=args.overwrite
        )
        print(json.dumps({"model": path, "positives": len(positives), "negatives": len(negatives)}))
        return 0

    from transformers import AutoModelForCausalLM

    import hf_llama3

    rubric = Path(args.rubric).read_text(encoding="utf-8") if args.rubric else DEFAULT_RUBRIC
    if "{text}" not in rubric:
        raise ValueError("the rubric must contain {text} where the page goes.")
    texts = read_texts(args.input, args.max_docs)
    judge_path = Path(args.judge)
    if not judge_path.is_dir():
        raise FileNotFoundError(f"--judge {args.judge!r} is not a checkpoint folder.")
    model = AutoModelForCausalLM.from_pretrained(judge_path)
    tokenizer_path = args.tokenizer or (judge_path if (judge_path / "tokenizer.json").is_file() else None)
    tokenizer = hf_llama3.load_tokenizer(tokenizer_path)
    labels = judge_labels(texts, model, tokenizer, rubric)
    EncoderClassifier(args.encoder).fit(texts, labels).save(args.output)
    print(json.dumps({"classifier": args.output, "documents": len(texts), "high_quality": int(sum(labels))}))
    return 0
