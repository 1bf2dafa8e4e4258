"""Teacher-target cache: frozen uni-modal teachers' features and logits computed once into Zarr."""
