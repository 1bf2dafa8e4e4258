"""Loading for training: the epoch plan and the four backends behind make_loader."""
