"""Training side of umt: models, methods, trainer, evaluation and `umt-train`."""
