"""Vision adapter [paper 7]: image encoder + gated cross-attention layers on a frozen Llama 3.

The model is transformers' own ``MllamaForConditionalGeneration`` (``model_type="mllama"``, Meta's Llama 3.2
Vision release); this package adds only what the paper's compositional recipe needs around it:

- :mod:`.config`   vision-encoder presets (tiny .. ViT-H/14 [7.2]) and the cross-attention schedule [7.2];
- :mod:`.build`    ``hf-llama3 vision init``: a stock ``mllama`` folder from one of our text checkpoints;
- :mod:`.tokenizer` the Llama 3.2 Vision tokenizer layout (``<|image|>`` = 128256) and chat template;
- :mod:`.data`     image-text rows (folder / ``datasets`` image column / the synthetic shapes set) and checks;
- :mod:`.train`    ``hf-llama3 vision train``: adapter training with the language model frozen [7.4];
- :mod:`.meta`     ``hf-llama3 vision convert``: Meta's ``llama_models.llama3.multimodal`` layout <-> ``mllama``.

Nothing here is imported by ``hf_llama3``; the CLI names :func:`training.vision.cli.main` as a string.
"""
