"""RLHF alignment pipeline: SFT -> HHH reward model -> PPO with a KL penalty -> evaluation."""

__version__ = "0.1.0"
