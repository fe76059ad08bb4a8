"""Stage 3: PPO with a KL penalty on a LoRA policy (see README.md in this folder)."""
from rlhf.rl.memory import limit_onednn_cache

# Before the process's first matmul, which oneDNN's cache size is read at (see rlhf.rl.memory).
limit_onednn_cache()
