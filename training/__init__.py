"""Pre-training engine and recipe, and the post-training stages of Llama 3 (paper sections 3 and 4)."""
