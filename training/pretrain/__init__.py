"""The paper's three-stage pre-training recipe [3.4]: initial pre-training, long-context extension, annealing."""
