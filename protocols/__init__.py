"""Two-party secure inference on SecretFlow SPU: session, secure ops, Π_prune, Π_reduce, cost meter.

Imports numpy, JAX, SPU and ``models.approx`` (constants only); never torch, Hydra,
OmegaConf or MLflow.
"""
