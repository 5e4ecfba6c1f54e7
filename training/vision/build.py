"""``hf-llama3 vision init``: a stock ``mllama`` folder built from one of our Llama 3 text checkpoints [paper 7].

The compositional approach [7]: the pre-trained language model is kept as it is and a vision encoder plus
cross-attention layers are added around it. The text checkpoint (ours, stock ``llama`` or Meta's layout: anything
``hf-llama3 convert`` reads) is copied weight for weight into ``MllamaForConditionalGeneration``'s language model:
text layer ``i`` lands at its flattened ``mllama`` index, the embedding gains the 8 new rows Meta appends
(``<|image|>`` first, initialised to the mean text embedding), a tied output matrix is written out. The new
parts (encoder, projector, cross-attention layers) get transformers' own initialisation, with every cross-attention
gate at zero [7.2], so the model's text logits equal the text model's until training opens the gates.

The folder holds config, safetensors weights, the Llama 3.2 Vision tokenizer (``<|image|>`` = 128256) with its
chat template, the ``MllamaImageProcessor`` settings and the processor: ``MllamaForConditionalGeneration`` and
``AutoProcessor`` load it without remote code and without this package.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from pathlib import Path

import torch
from transformers import MllamaConfig, MllamaForConditionalGeneration, MllamaProcessor, PreTrainedTokenizerFast
from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil

from hf_llama3.checkpoint_io import atomic_output_dir
from hf_llama3.cli_types import positive_int
from hf_llama3.convert import load_checkpoint
from hf_llama3.tokenization_llama3 import load_tokenizer

from .config import (
    CROSS_ATTENTION_EVERY,
    IMAGE_MEAN,
    IMAGE_STD,
    MAX_NUM_TILES,
    NUM_NEW_EMBEDDINGS,
    VISION_PRESETS,
    fusion_schedule,
    mllama_config_from_text,
    mllama_layer_indices,
    precompute_tile_grid,
    vision_config_from_preset,
)
from .tokenizer import vision_tokenizer

logger = logging.getLogger(__name__)

TEXT_PREFIX = "model.language_model."


def image_processor_for(config: MllamaConfig) -> MllamaImageProcessorPil:
    """The tiling image processor matching a vision config (tile size, max tiles, CLIP normalisation [7.4])."""
    vision = config.vision_config
    return MllamaImageProcessorPil(
        size={"height": vision.image_size, "width": vision.image_size},
        max_image_tiles=vision.max_num_tiles,
        image_mean=IMAGE_MEAN,
        image_std=IMAGE_STD,
        resample=2,  # bilinear, as Meta's VariableSizeImageTransform
    )


def processor_for(config: MllamaConfig, tokenizer: PreTrainedTokenizerFast) -> MllamaProcessor:
    """``MllamaProcessor`` (image processor + vision tokenizer + chat template) for a config."""
    return MllamaProcessor(image_processor_for(config), tokenizer, chat_template=tokenizer.chat_template)


def text_to_mllama_state_dict(
    text_state_dict: dict[str, torch.Tensor], num_text_layers: int, fusion: list[int]
) -> dict[str, torch.Tensor]:
    """Our (HF Llama-named) text weights under ``MllamaForConditionalGeneration``'s names.

    The embedding gets :data:`NUM_NEW_EMBEDDINGS` extra rows (Meta's ``learnable_embedding``), set to the mean
    text embedding; a tied output matrix (no ``lm_head.weight``) is copied from the embedding.
    """
    _, positions = mllama_layer_indices(num_text_layers, fusion)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in text_state_dict.items():
        match = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
        if match:
            out[f"{TEXT_PREFIX}layers.{positions[int(match.group(1))]}.{match.group(2)}"] = tensor
        elif name == "model.norm.weight":
            out[f"{TEXT_PREFIX}norm.weight"] = tensor
        elif name == "model.embed_tokens.weight":
            new_rows = tensor.float().mean(0, keepdim=True).expand(NUM_NEW_EMBEDDINGS, -1).to(tensor.dtype)
            out[f"{TEXT_PREFIX}embed_tokens.weight"] = torch.cat([tensor, new_rows])
        elif name == "lm_head.weight":
            out["lm_head.weight"] = tensor
        else:
            raise ValueError(f"Text checkpoint tensor {name!r} has no place in a Llama 3 language model.")
    out.setdefault("lm_head.weight", text_state_dict["model.embed_tokens.weight"])
    return out


@torch.no_grad()
def tie_tile_embeddings(model: MllamaForConditionalGeneration) -> None:
    """Initialise the per-aspect-ratio tile embeddings from one ``[tiles, tiles, ...]`` grid, as Meta's model has.

    transformers stores one row per aspect ratio; Meta shares the embedding of a tile position across ratios.
    Starting from a shared grid keeps a fresh folder convertible to Meta's layout (``vision convert``).
    """
    vision = model.config.vision_config
    tiles, width = vision.max_num_tiles, vision.hidden_size
    std = vision.initializer_range
    vm = model.model.vision_model
    patches = (vision.image_size // vision.patch_size) ** 2 + 1
    for weight, tokens in (
        (vm.pre_tile_positional_embedding.embedding.weight, 1),
        (vm.post_tile_positional_embedding.embedding.weight, 1),
        (vm.gated_positional_embedding.tile_embedding.weight, patches),
    ):
        grid = torch.randn(tiles, tiles, tokens, width) * std
        weight.copy_(precompute_tile_grid(grid, vision.supported_aspect_ratios))


def text_parameter_names(config: MllamaConfig) -> list[str]:
    """Names of the frozen language-model parameters inside an ``mllama`` model (all but cross-attention)."""
    text = config.text_config
    cross = set(text.cross_attention_layers)
    with torch.device("meta"):
        model = MllamaForConditionalGeneration(config)
    names = []
    for name, _ in model.named_parameters():
        match = re.match(rf"{re.escape(TEXT_PREFIX)}layers\.(\d+)\.", name)
        if (name.startswith(TEXT_PREFIX) and not (match and int(match.group(1)) in cross)) or name == "lm_head.weight":
            names.append(name)
    return names


def build_vision_model(
    src: str | os.PathLike,
    *,
    vision_preset: str = "tiny",
    every: int = CROSS_ATTENTION_EVERY,
    max_num_tiles: int = MAX_NUM_TILES,
    tokenizer: str | os.PathLike | None = None,
    seed: int = 0,
) -> tuple[MllamaForConditionalGeneration, MllamaProcessor]:
    """The ``mllama`` model and processor for a text checkpoint folder (see the module docstring)."""
    fmt, text_config, text_state_dict = load_checkpoint(src)
    if "score.weight" in text_state_dict:
        raise ValueError(f"{src} is a sequence-classification (reward) model; vision init needs a causal LM.")
    text_tokenizer = _text_tokenizer(src, tokenizer)
    if len(text_tokenizer) != text_config.vocab_size:
        raise ValueError(
            f"{src}/config.json has vocab_size {text_config.vocab_size} but its tokenizer has {len(text_tokenizer)} "
            "tokens; `<|image|>` takes id vocab_size, so both must be the Llama 3 vocabulary (128256). Build the "
            "text model with the real vocabulary (presets keep it) or pass the matching --tokenizer."
        )
    source = f"{src} ({fmt} checkpoint)"
    config = mllama_config_from_text(
        text_config, vision_config_from_preset(vision_preset, max_num_tiles), every=every, source=source
    )
    fusion = fusion_schedule(text_config.num_hidden_layers, every, source)
    torch.manual_seed(seed)
    model = MllamaForConditionalGeneration(config)
    tie_tile_embeddings(model)
    mapped = text_to_mllama_state_dict(text_state_dict, text_config.num_hidden_layers, fusion)
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    if unexpected:  # pragma: no cover - the mapping above only produces names of the model
        raise AssertionError(f"unexpected tensors {unexpected[:5]}")
    frozen = set(text_parameter_names(config))
    not_copied = sorted(frozen & set(missing))
    if not_copied:
        raise ValueError(f"{src} lacks language-model tensors {not_copied[:5]}: the checkpoint is incomplete.")
    model.eval()
    return model, processor_for(config, vision_tokenizer(text_tokenizer))


def _text_tokenizer(src: str | os.PathLike, tokenizer: str | os.PathLike | None) -> PreTrainedTokenizerFast:
    if tokenizer is not None:
        return load_tokenizer(tokenizer)
    src = Path(src)
    if (src / "tokenizer.json").is_file() or (src / "tokenizer.model").is_file():
        return load_tokenizer(src)
    logger.info("%s has no tokenizer; using the Llama 3 tokenizer of the llama-models package.", src)
    return load_tokenizer()


def save_vision_folder(
    model: MllamaForConditionalGeneration, processor: MllamaProcessor, dst: str | os.PathLike, overwrite: bool = False
) -> Path:
    """Write model + processor as a stock ``mllama`` folder, atomically (nothing at ``dst`` on failure)."""
    with atomic_output_dir(dst, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return Path(dst)


def init_vision_folder(src: str | os.PathLike, dst: str | os.PathLike, overwrite: bool = False, **options) -> Path:
    """``hf-llama3 vision init SRC DST``: build (:func:`build_vision_model`) and save (:func:`save_vision_folder`)."""
    model, processor = build_vision_model(src, **options)
    return save_vision_folder(model, processor, dst, overwrite=overwrite)


def add_init_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="text checkpoint folder (ours, stock llama, or Meta consolidated.NN.pth)")
    parser.add_argument("dst", help="output mllama folder (must not exist unless --overwrite)")
    parser.add_argument("--vision-preset", default="tiny", choices=sorted(VISION_PRESETS), help="vision encoder size")
    parser.add_argument(
        "--cross-attention-every",
        type=positive_int,
        default=CROSS_ATTENTION_EVERY,
        help="one cross-attention layer per this many text layers [7.2: 4]",
    )
    parser.add_argument("--max-num-tiles", type=positive_int, default=MAX_NUM_TILES, help="tiles per image [7.3: 4]")
    parser.add_argument("--tokenizer", help="Llama 3 tokenizer (default: SRC's, else the llama-models one)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the new (vision, cross-attention) weights")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def run_init(args: argparse.Namespace) -> int:
    dst = init_vision_folder(
        args.src,
        args.dst,
        overwrite=args.overwrite,
        vision_preset=args.vision_preset,
        every=args.cross_attention_every,
        max_num_tiles=args.max_num_tiles,
        tokenizer=args.tokenizer,
        seed=args.seed,
    )
    print(f"wrote mllama folder to {dst}")
    return 0
