"""The accelerator a layout is planned for: memory, bf16 peak, link bandwidths, with H100 and H200 presets.

The paper trains on H100 80GB HBM3 GPUs, eight per server joined by NVLink, servers joined by 400 Gbps RoCE or
InfiniBand [3.3.1]; its MFU figures are against the bf16 dense peak [3.3.2, Table 4]. Bandwidths here are the bus
bandwidths a ring collective reaches (what ``nccl-tests`` reports as ``busbw``), not the line rates.
"""

from __future__ import annotations

import dataclasses

GB = 10**9


@dataclasses.dataclass(frozen=True)
class GPUSpec:
    """One GPU kind.

    Args:
        name: Preset name.
        hbm_bytes: Device memory (10^9-byte GB, as vendors count).
        bf16_flops: Dense bf16 peak, FLOP/s (no sparsity): the MFU denominator.
        intra_node_bandwidth: Bytes/s per GPU a collective reaches inside a node (NVLink).
        inter_node_bandwidth: Bytes/s per GPU a collective reaches across nodes (one 400 Gbps NIC per GPU).
        gpus_per_node: GPUs per server (NVLink domain).
        matmul_efficiency: Fraction of ``bf16_flops`` the large bf16 matmul and attention kernels of a training
            step reach: the projection's compute time is FLOPs / (peak x this).
    """

    name: str
    hbm_bytes: int
    bf16_flops: float
    intra_node_bandwidth: float
    inter_node_bandwidth: float
    gpus_per_node: int = 8
    matmul_efficiency: float = 0.75

    def __post_init__(self) -> None:
        numbers = (self.hbm_bytes, self.bf16_flops, self.intra_node_bandwidth, self.inter_node_bandwidth)
        if min(numbers) <= 0 or self.gpus_per_node < 1 or not 0 < self.matmul_efficiency <= 1:
            raise ValueError(
                f"GPUSpec {self.name!r} needs positive memory, peak and bandwidths, gpus_per_node >= 1 and "
                f"0 < matmul_efficiency <= 1, got {self}."
            )


# H100 SXM: 80 GB HBM3, 989 TFLOP/s dense bf16; NVLink 4 at 450 GB/s per direction, of which NCCL's ring reaches
# about 360 GB/s; one 400 Gbps (50 GB/s) NIC per GPU, about 40 GB/s reached [3.3.1]. Large bf16 GEMMs run at about
# three quarters of the dense peak (cuBLAS on H100 SXM), the default matmul_efficiency.
# H200: the same chip and links with 141 GB of HBM3e.
GPU_PRESETS: dict[str, GPUSpec] = {
    "h100": GPUSpec("h100", 80 * GB, 989e12, 360e9, 40e9),
    "h200": GPUSpec("h200", 141 * GB, 989e12, 360e9, 40e9),
}


def gpu_spec(name: str, **overrides: float) -> GPUSpec:
    """The preset ``name`` (``h100``, ``h200``) with any field overridden (``None`` values are ignored)."""
    if name not in GPU_PRESETS:
        raise ValueError(f"Unknown GPU kind {name!r}: choose one of {sorted(GPU_PRESETS)} and override its settings.")
    return dataclasses.replace(GPU_PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
