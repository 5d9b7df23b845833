"""Native architectures of the training submodule; ``filterdb.training.registry`` builds them from model strings."""
