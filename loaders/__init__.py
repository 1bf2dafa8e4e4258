"""Data side of umt: shard packing, synthetic data, decoding, views and loaders."""
