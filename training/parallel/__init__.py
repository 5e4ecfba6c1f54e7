"""4D-parallel pre-training engine on torch.distributed [paper 3.3.2].

dims (ParallelDims, DeviceMesh) -> stage (Llama3Stage: the model or one pipeline stage, HF parameter names) ->
tensor_parallel, context_parallel, pipeline_parallel, fsdp (applied by parallelize in the order TP -> CP ->
activation checkpointing -> compile -> FSDP) -> engine (ParallelTrainer.step) -> checkpoint (DCP, HF export),
metrics (throughput, MFU), distributed (the launcher's process group), spawn (local gloo worlds for tests).
The training loop that drives the engine is ``training.pretrain`` (``hf-llama3 pretrain``).
"""
