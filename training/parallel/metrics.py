"""Throughput and model FLOPs utilisation (MFU) per step.

Training FLOPs per token are ``6 N`` for the matmuls of the dense part (``N`` = parameters that multiply
activations: every projection and the output layer, not the input embedding lookup) plus the attention
scores and values, ``2 * 2 * heads * head_dim * context`` per layer in forward, three times that with
backward. With a causal mask a token attends on average to half the sequence, so the attention term is
``6 * layers * heads * head_dim * seq_len`` (``causal=False`` gives the unmasked PaLM count, twice that).
MFU divides achieved FLOPs per second per device by the device's dense peak (bf16 on GPUs) [3.3.2 reports
38-43% BF16 MFU on H100s at 405B scale].
"""

from __future__ import annotations

import dataclasses
import time

import torch

from hf_llama3 import Llama3Config

# Dense bf16 peak FLOP/s (no sparsity) by device-name substring, from the vendors' data sheets.
PEAK_BF16_FLOPS = {
    "H200": 989.4e12,
    "H100 NVL": 835.5e12,
    "H100 PCIe": 756.0e12,
    "H100": 989.4e12,
    "A100": 312.0e12,
    "L40S": 362.05e12,
    "A10G": 70.0e12,
}


def matmul_params(config: Llama3Config) -> int:
    """Parameters that multiply activations: attention and MLP projections of every layer, and the output layer."""
    hidden, head_dim = config.hidden_size, config.head_dim
    attention = hidden * head_dim * (2 * config.num_attention_heads + 2 * config.num_key_value_heads)
    mlp = 3 * hidden * config.intermediate_size
    return config.num_hidden_layers * (attention + mlp) + hidden * config.vocab_size


def training_flops_per_token(config: Llama3Config, seq_len: int, causal: bool = True) -> float:
    """Forward + backward FLOPs per trained token: ``6 N`` plus the attention term (see the module docstring)."""
    attention = 12 * config.num_hidden_layers * config.num_attention_heads * config.head_dim * seq_len
    return 6 * matmul_params(config) + (attention / 2 if causal else attention)


def device_peak_flops(device: torch.device | str | None = None) -> float | None:
    """The dense bf16 peak of a CUDA device from its name, ``None`` when unknown (e.g. CPU: pass a setting)."""
    if not torch.cuda.is_available() or torch.device(device or "cuda").type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS.items():
        if key in name:
            return flops
    return None


@dataclasses.dataclass
class StepMetrics:
    """What one step achieved."""

    step: int
    loss: float
    step_time_s: float
    tokens_per_s_per_device: float
    tflops_per_device: float
    mfu: float | None
    grad_norm: float | None = None

    def format(self) -> str:
        """One log line."""
        mfu = f"{100 * self.mfu:.1f}%" if self.mfu is not None else "n/a (set peak_flops)"
        norm = f" | grad norm {self.grad_norm:.3f}" if self.grad_norm is not None else ""
        return (
            f"step {self.step} | loss {self.loss:.4f}{norm} | {self.step_time_s * 1000:.0f} ms | "
            f"{self.tokens_per_s_per_device:,.0f} tok/s/device | {self.tflops_per_device:.3g} TFLOP/s/device | MFU {mfu}"
        )


class ThroughputMeter:
    """Times steps and turns tokens per step into tokens/s per device and MFU.

    Args:
        config: The model config (for FLOPs per token).
        seq_len: Training sequence length.
        num_devices: Devices sharing each step's tokens (the world size).
        peak_flops: Peak FLOP/s of one device; defaults to ``device_peak_flops()``.
    """

    def __init__(self, config: Llama3Config, seq_len: int, num_devices: int, peak_flops: float | None = None):
        if seq_len <= 0 or num_devices <= 0:
            raise ValueError(f"seq_len and num_devices must be positive, got {seq_len} and {num_devices}.")
        self.flops_per_token = training_flops_per_token(config, seq_len)
        self.num_devices = num_devices
        self.peak_flops = peak_flops if peak_flops is not None else device_peak_flops()
        self._start: float | None = None

    def start(self) -> None:
        """Mark the beginning of a step."""
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def stop(self, step: int, loss: float, tokens: int, grad_norm: float | None = None) -> StepMetrics:
        """End the step that trained ``tokens`` tokens (global) and return its metrics."""
        if self._start is None:
            raise RuntimeError("ThroughputMeter.stop() called before start().")
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - self._start
        self._start = None
        per_device = tokens / elapsed / self.num_devices
        flops = per_device * self.flops_per_token
        mfu = flops / self.peak_flops if self.peak_flops else None
        return StepMetrics(step, loss, elapsed, per_device, flops / 1e12, mfu, grad_norm)
