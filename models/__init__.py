"""Torch models, Hugging Face weight port, data and crypto-aware fine-tuning.

``models.approx`` holds the approximation constants shared with the secure engine and
imports nothing but the standard library; keep this ``__init__`` free of heavy imports.
"""
