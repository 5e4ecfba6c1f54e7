"""LoRA through PEFT [our option]: reward and DPO train adapters, exports are merged and load with the Auto classes."""

from __future__ import annotations

import math

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from tests.post_training.conftest import PREFERENCE_ROWS, tiny_causal_lm, tiny_reward_model, trainer_args
from tests.post_training.test_dpo import ROWS as DPO_ROWS
from training.dpo import Llama3DPOConfig, Llama3DPOTrainer
from training.post_cli import export_model, lora_config
from training.reward import Llama3RewardConfig, Llama3RewardTrainer, packed_rewards

LORA = {"use_peft": True, "lora_r": 4, "lora_alpha": 8, "max_steps": 2, "learning_rate": 1e-2}


def test_lora_reward_model_exports_merged(tmp_path, tokenizer):
    config = Llama3RewardConfig(**trainer_args(tmp_path, **LORA))
    trainer = Llama3RewardTrainer(
        model=tiny_reward_model(0),
        args=config,
        train_dataset=Dataset.from_list(PREFERENCE_ROWS),
        processing_class=tokenizer,
        peft_config=lora_config(config, "SEQ_CLS"),
    )
    assert trainer.model.peft_config  # adapters, not full weights, are trained
    assert math.isfinite(trainer.train().training_loss)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    with torch.no_grad():
        adapted = packed_rewards(trainer.model.eval(), batch)
    out = export_model(trainer, tmp_path / "rm")
    merged = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert not any("lora" in name for name in merged.state_dict())
    base = tiny_reward_model(0).state_dict()["model.layers.0.self_attn.q_proj.weight"]
    assert not torch.equal(merged.state_dict()["model.layers.0.self_attn.q_proj.weight"], base)
    with torch.no_grad():
        torch.testing.assert_close(packed_rewards(merged, batch), adapted, rtol=1e-4, atol=1e-5)


def test_lora_dpo_uses_the_base_as_reference_and_merges(tmp_path, tokenizer):
    config = Llama3DPOConfig(**trainer_args(tmp_path, **LORA))
    trainer = Llama3DPOTrainer(
        model=tiny_causal_lm(0),
        args=config,
        train_dataset=Dataset.from_list(DPO_ROWS),
        processing_class=tokenizer,
        peft_config=lora_config(config, "CAUSAL_LM"),
    )
    assert trainer.ref_model is None  # adapters off = the reference, no second model in memory
    assert math.isfinite(trainer.train().training_loss)
    out = export_model(trainer, tmp_path / "policy")
    policy = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in name for name in policy.state_dict())
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    generated = policy.generate(**prompt, max_new_tokens=2, do_sample=False)
    assert generated.shape[1] > prompt["input_ids"].shape[1]
