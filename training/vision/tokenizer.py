"""The Llama 3.2 Vision tokenizer layout: the Llama 3 tokenizer with ``<|image|>`` at id ``vocab_size`` (128256).

Meta's text tokenizer names id 128011 ``<|image|>`` (``llama_models/llama3/tokenizer.py``), but the vision model
never sees 128011: ``ChatFormat._model_input_from_tokens_images`` rewrites it to 128256, the first of the 8
learnable embeddings that ``CrossAttentionTransformerText`` appends after the frozen vocabulary. transformers'
``mllama`` folders (and ``MllamaConfig.image_token_index``) use 128256 directly, so the tokenizer written here
renames 128011 to a reserved token (the reserved numbering moves up by one, as in Meta's Hugging Face release) and
adds ``<|image|>`` as id 128256. Text without images tokenizes exactly as with the Llama 3 tokenizer.
"""

from __future__ import annotations

import json

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

IMAGE_TOKEN = "<|image|>"
META_TEXT_IMAGE_TOKEN_ID = 128011  # `<|image|>` in Meta's text tokenizer (the model input uses 128256)
FIRST_RESERVED_AFTER_IMAGE = 2  # 128011 becomes <|reserved_special_token_2|>, 128012 <|..._3|>, ...

# Llama 3.2 Vision dialog format: the Llama 3.1 header/turn tokens, an image part rendered as `<|image|>` in
# place. Content is a string or a list of {"type": "image"} / {"type": "text", "text": ...} parts.
VISION_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] | trim }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' %}{{- '<|image|>' }}"
    "{%- elif part['type'] == 'text' %}{{- part['text'] | trim }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


def vision_tokenizer(text_tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """The ``mllama`` tokenizer for a Llama 3 text tokenizer: ``<|image|>`` moved to id ``len(text_tokenizer)``."""
    vocab_size = len(text_tokenizer)
    if text_tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) != META_TEXT_IMAGE_TOKEN_ID:
        raise ValueError(
            f"The text tokenizer does not have {IMAGE_TOKEN} at id {META_TEXT_IMAGE_TOKEN_ID} (Llama 3's layout); "
            "pass a Llama 3 tokenizer folder with --tokenizer."
        )
    data = json.loads(text_tokenizer.backend_tokenizer.to_str())
    for entry in data["added_tokens"]:
        if META_TEXT_IMAGE_TOKEN_ID <= entry["id"] < vocab_size:
            n = entry["id"] - META_TEXT_IMAGE_TOKEN_ID + FIRST_RESERVED_AFTER_IMAGE
            entry["content"] = f"<|reserved_special_token_{n}|>"
    image_entry = {
        "id": vocab_size,
        "content": IMAGE_TOKEN,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": True,
    }
    data["added_tokens"].append(image_entry)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)),
        bos_token=text_tokenizer.bos_token,
        eos_token=text_tokenizer.eos_token,
        pad_token=text_tokenizer.pad_token,
        padding_side="right",
        clean_up_tokenization_spaces=False,
        model_max_length=text_tokenizer.model_max_length,
        chat_template=VISION_CHAT_TEMPLATE,
    )
    if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) != vocab_size:  # pragma: no cover - guards the JSON edit
        raise AssertionError(f"{IMAGE_TOKEN} did not land on id {vocab_size}.")
    return tokenizer
