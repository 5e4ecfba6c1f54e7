"""hf-llama3: the Llama 3 model, tokenizer and checkpoint tools on transformers.

Importing the package registers ``model_type="llama3"`` with transformers' Auto classes, so
``AutoConfig``/``AutoModelForCausalLM``/``AutoModelForSequenceClassification`` load our folders, and marks
the classes for remote code so ``save_pretrained`` writes an ``auto_map`` and the modeling files (a fresh
process without this package loads them with ``trust_remote_code=True``).
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from .configuration_llama3 import PRESETS, Llama3Config
from .modeling_llama3 import Llama3ForCausalLM, Llama3ForSequenceClassification, Llama3Model, Llama3PreTrainedModel

__version__ = "0.1.0"

AUTO_CLASSES = {
    "AutoModel": (AutoModel, Llama3Model),
    "AutoModelForCausalLM": (AutoModelForCausalLM, Llama3ForCausalLM),
    "AutoModelForSequenceClassification": (AutoModelForSequenceClassification, Llama3ForSequenceClassification),
}


def _register() -> None:
    AutoConfig.register(Llama3Config.model_type, Llama3Config, exist_ok=True)
    Llama3Config.register_for_auto_class()
    for auto_name, (auto_class, model_class) in AUTO_CLASSES.items():
        auto_class.register(Llama3Config, model_class, exist_ok=True)
        model_class.register_for_auto_class(auto_name)


_register()

__all__ = [
    "PRESETS",
    "Llama3Config",
    "Llama3ForCausalLM",
    "Llama3ForSequenceClassification",
    "Llama3Model",
    "Llama3PreTrainedModel",
]

# --- tokenizer and chat format (issue 3) ---
from .chat_format import (  # noqa: E402
    CHAT_EOS_TOKEN_IDS,
    DialogError,
    DialogOptions,
    EncodedDialog,
    chat_generation_config,
    decode_assistant_message,
    encode_dialog,
    parse_assistant_message,
    parse_tool_call,
    render_dialog,
    stop_token_ids,
)
from .tokenization_llama3 import load_tokenizer  # noqa: E402

__all__ += [
    "CHAT_EOS_TOKEN_IDS",
    "DialogError",
    "DialogOptions",
    "EncodedDialog",
    "chat_generation_config",
    "decode_assistant_message",
    "encode_dialog",
    "load_tokenizer",
    "parse_assistant_message",
    "parse_tool_call",
    "render_dialog",
    "stop_token_ids",
]
