"""Benchmarks: ratios measured side by side in one run, each a tracked pipeline run.

``python -m pipeline stage=benchmark benchmark=<name>`` with ``<name>`` one of ``engine`` (one
layer per token count × batch × ownership), ``ops`` (per op class vs BOLT), ``prune`` (Π_prune vs
BOLT WE per layer), ``e2e`` / ``e2e_quick`` (whole-model figures composed from measured layers),
``training`` (fine-tuning steps per second by padding mode).
Settings: ``benchmarks.configs``; results and the commands that produced them: ``docs/archive/benchmarks.md`` (the log so far).
"""
