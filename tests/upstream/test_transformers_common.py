"""transformers' own common model, generation and causal-LM tests, run on hf-llama3's classes (opt-in).

This is an external check that ``Llama3Model`` / ``Llama3ForCausalLM`` / ``Llama3ForSequenceClassification``
behave like an in-tree transformers model: it runs ``CausalLMModelTest`` from transformers' ``tests/causal_lm_tester.py``
(``ModelTesterMixin`` from ``tests/test_modeling_common.py``, ``GenerationTesterMixin`` from
``tests/generation/test_utils.py``, the pipeline / training / TP / FSDP mixins), wired the way
``tests/models/llama/test_modeling_llama.py`` wires stock Llama.

transformers' test code is not part of this repository. To run it, point ``TRANSFORMERS_TESTS_DIR`` at the ``tests/``
folder of a transformers git checkout of the *installed* version (the checkout's ``src/transformers`` and
``utils/test_module`` are read by the mixins too)::

    git clone --depth 1 --branch v$(python -c "import transformers; print(transformers.__version__)") \
        https://github.com/huggingface/transformers /tmp/transformers
    pip install parameterized
    TRANSFORMERS_TESTS_DIR=/tmp/transformers/tests pytest tests/upstream -n 2

Without the variable the module is skipped. ``DESELECTED`` lists the tests that are expected not to pass on our
classes, each with its reason; everything else is expected to pass or to skip on its own.
"""

from __future__ import annotations

import os
import re
import sys
import unittest
from pathlib import Path

import pytest

TESTS_DIR = os.environ.get("TRANSFORMERS_TESTS_DIR")
if not TESTS_DIR:
    pytest.skip(
        "set TRANSFORMERS_TESTS_DIR to a transformers checkout's tests/ folder to run transformers' common tests",
        allow_module_level=True,
    )
TESTS_DIR = str(Path(TESTS_DIR).resolve())
if not Path(TESTS_DIR, "causal_lm_tester.py").is_file():
    pytest.skip(f"TRANSFORMERS_TESTS_DIR={TESTS_DIR} has no causal_lm_tester.py", allow_module_level=True)


def _checkout_version() -> str | None:
    init = Path(TESTS_DIR).parent / "src" / "transformers" / "__init__.py"
    if not init.is_file():
        return None
    match = re.search(r'^__version__\s*=\s*"([^"]+)"', init.read_text(encoding="utf-8"), re.MULTILINE)
    return match.group(1) if match else None


def _release(version: str) -> str:
    return re.sub(r"(\.dev\d*|rc\d*)$", "", version)


import transformers  # noqa: E402

_CHECKOUT_VERSION = _checkout_version()
if (
    _CHECKOUT_VERSION is not None
    and _release(_CHECKOUT_VERSION) != _release(transformers.__version__)
    and os.environ.get("TRANSFORMERS_TESTS_ANY_VERSION") != "1"
):
    pytest.skip(
        f"TRANSFORMERS_TESTS_DIR is transformers {_CHECKOUT_VERSION}, installed is {transformers.__version__} "
        "(set TRANSFORMERS_TESTS_ANY_VERSION=1 to run anyway)",
        allow_module_level=True,
    )
pytest.importorskip(
    "parameterized", reason="transformers' test mixins need `parameterized` (pip install parameterized)"
)

# transformers' test files are the package `tests` (relative imports, and a few `from tests.x import ...`). This
# repository's test folder is the package `tests` too: put the checkout's folder on its search path, after ours, so
# `tests.causal_lm_tester`, `tests.generation.test_utils`, ... resolve into the checkout. None of our subpackage names
# (data, distributed, training, ...) is imported by the mixins.
import tests as _tests_package  # noqa: E402

if TESTS_DIR not in _tests_package.__path__:
    _tests_package.__path__.append(TESTS_DIR)
# The mixins read `utils/test_module` (custom config classes) from the checkout root via sys.path themselves.

from hf_llama3 import Llama3Config, Llama3ForCausalLM, Llama3ForSequenceClassification, Llama3Model  # noqa: E402
from tests.causal_lm_tester import CausalLMModelTest, CausalLMModelTester  # noqa: E402

# The mixins choose labels, and skip base models, by class *name* in transformers' built-in Auto tables
# (`MODEL_MAPPING_NAMES`, ...). A registered (out-of-tree) model is absent from them, so the training tests would
# train the base model and get no labels. Give the test modules copies of the tables with our classes in, as an
# in-tree model would have; transformers' own tables are not touched.
_OUR_CLASS_NAMES = {
    "MODEL_MAPPING_NAMES": Llama3Model.__name__,
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES": Llama3ForCausalLM.__name__,
    "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES": Llama3ForSequenceClassification.__name__,
}
for _module in list(sys.modules.values()):
    _file = getattr(_module, "__file__", None) or ""
    if _file.startswith(TESTS_DIR + os.sep):
        for _table, _class_name in _OUR_CLASS_NAMES.items():
            if isinstance(getattr(_module, _table, None), dict):
                setattr(_module, _table, {**getattr(_module, _table), Llama3Config.model_type: _class_name})

# Tests (by name, parameterized variants included) that read `logits` from a forward that also gets `labels`. Our
# default chunked loss (`loss_chunk_size=1024`) returns `logits=None` there, so these run with `loss_chunk_size=0`.
# Checked against transformers 5.24.0 (tests/*.py of its sdist; generation/exporters/causal-LM tester files of a
# 5.16.0.dev0 checkout): no test needed it (loss_chunk_size=0 for every test gave the same results). List a test here
# if a later version adds one.
FULL_LOGITS_TESTS: set[str] = set()

# Expected not to pass on our classes; each with the reason. (Tests that do not apply skip themselves.)
DESELECTED = {
    "test_model_forward_default_config_values": (
        "By design: the test rebuilds the config without bos/eos/pad ids, so Llama3Config's Llama 3 defaults "
        "(128000/128001/128004) are validated against the tester's vocab_size=99 and rejected."
    ),
}


class Llama3ModelTester(CausalLMModelTester):
    base_model_class = Llama3Model
    causal_lm_class = Llama3ForCausalLM
    sequence_classification_class = Llama3ForSequenceClassification
    config_class = Llama3Config
    # Llama3Config validates the special token ids against the vocabulary: the tester's small vocabulary
    # (vocab_size=99) needs its own bos/eos/pad ids passed in, never our 128000+ defaults.
    forced_config_args = ["pad_token_id", "bos_token_id", "eos_token_id", "loss_chunk_size"]

    def __init__(self, parent, **kwargs):
        super().__init__(parent, **kwargs)
        self.bos_token_id, self.eos_token_id, self.pad_token_id = 1, 2, 0
        test_name = getattr(parent, "_testMethodName", "")
        full_logits = any(test_name == name or test_name.startswith(name + "_") for name in FULL_LOGITS_TESTS)
        self.loss_chunk_size = 0 if full_logits else Llama3Config.loss_chunk_size


class Llama3ModelTest(CausalLMModelTest, unittest.TestCase):
    model_tester_class = Llama3ModelTester
    # As stock Llama's tester: `test_cpu_offload` needs 0.8 rather than 0.9.
    model_split_percents = [0.5, 0.7, 0.8]
    _torch_compile_train_cls = Llama3ForCausalLM


def _deselect(test_class: type, deselected: dict[str, str]) -> None:
    for attribute in dir(test_class):
        for name, reason in deselected.items():
            if attribute == name or (attribute.startswith(name + "_") and attribute[len(name) + 1 :][:1].isdigit()):
                setattr(
                    test_class, attribute, unittest.skip(f"deselected (tests/upstream): {reason}")(lambda self: None)
                )


_deselect(Llama3ModelTest, DESELECTED)
