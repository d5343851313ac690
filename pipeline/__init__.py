"""Hydra entry point, typed configs, MLflow tracking and the five stages."""
