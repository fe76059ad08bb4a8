"""Models: the zoo of embedded defaults, the one loader of policies/adapters/tokenizers, LoRA, quantization, sampling and generation, export."""
