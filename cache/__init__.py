"""Teacher-feature cache: frozen uni-modal teachers' features computed once into Zarr."""
