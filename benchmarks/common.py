"""What every benchmark shares: its result type, the session warm-up, shapes, Markdown tables."""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import jax.numpy as jnp
import numpy as np
from tabulate import tabulate

from benchmarks.configs import SHAPES, Shape
from models.approx import EXP_LOW, GELU_LOW
from protocols import nonlinear
from protocols.model_spec import TransformerSpec

LogMetrics = Callable[[dict[str, float]], None]
"""Called with each measurement as it completes (the stage logs them to MLflow at once, so a
long run that fails later keeps what it measured)."""


@dataclass
class BenchResult:
    """``report``: Markdown (tables and the ratios measured side by side); ``metrics``: every
    number of the report by name; ``rows``: the measurements as plain records (JSON artifact)."""

    report: str
    metrics: dict[str, float] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)


def shape_spec(shape: Shape, layers: int = 1) -> TransformerSpec:
    """The named shape with ``layers`` layers."""
    return TransformerSpec(layers=layers, **SHAPES[Shape(shape)])


def machine_facts() -> dict[str, Any]:
    """This host: name, processor, the cores this process may use, memory (GiB), platform, Python."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"host": platform.node(), "processor": platform.processor() or platform.machine(), "cores": cores,
            "memory_gib": round(memory, 1), "platform": platform.platform(), "python": platform.python_version()}


def machine() -> str:
    """This host as measured on: name, processor, cores the process may use."""
    facts = machine_facts()
    return f"{facts['host']}, {facts['processor']}, {facts['cores']} cores"


def markdown(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A GitHub-flavoured Markdown table (cells already formatted)."""
    return tabulate(rows, headers=list(headers), tablefmt="github", disable_numparse=True)


def _warm_up_program(x: jnp.ndarray, w: jnp.ndarray) -> jnp.ndarray:
    """Touches HE matmul, comparison, product, equality and the exp / GELU kernels (their
    fixed-point → int conversion and bit extraction): Cheetah's one-time key/OT setup."""
    y = x @ w
    return (jnp.maximum(y, 0.0) * y + (y == 0.0) + nonlinear.softmax(y, None, EXP_LOW)
            + nonlinear.gelu(y, GELU_LOW))


def warm_up(session: Any) -> None:
    """Run ``_warm_up_program`` so that per-session setup is not billed to the first measured op
    (measured CHEETAH, softmax 2×32×32 as the first program of a session: 19.6 s / 10.3 MB,
    later runs 2.7 s / 7.2 MB; after this 64×64 warm-up the first run takes no longer than later
    ones, after a 4×4 one it still took 12.5 s). Costs ≈ 20 s and 40 MB once per session."""
    rng = np.random.default_rng(0)
    session.share("warm_x", rng.normal(size=(64, 64)).astype(np.float32), "client")
    session.share("warm_w", rng.normal(size=(64, 64)).astype(np.float32), "server")
    session.run(_warm_up_program, ["warm_x", "warm_w"], ["warm_y"], op="Other")
    session.delete("warm_x", "warm_w", "warm_y")
