"""Lightning glue: the interactive training step, losses, optimiser groups and evaluation metrics."""
