"""The stored format: shard sets and their manifest, media codecs, and views of a sample."""
