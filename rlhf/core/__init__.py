"""The machinery every stage shares: configs, device and precision, run folders, checkpoints, metrics logging, threads, multi-process sharding."""
