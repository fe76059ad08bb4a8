"""Stage 3: PPO with a KL penalty on a LoRA policy (see README.md in this folder)."""
