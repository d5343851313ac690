"""protocols/ and models/ are libraries: importing them must not pull Hydra, OmegaConf or MLflow."""
from __future__ import annotations

import subprocess
import sys

from pipeline.config import PROJECT_ROOT

LIBRARY_MODULES = [
    "protocols", "protocols.session", "protocols.meter", "protocols.nonlinear", "protocols.pruning",
    "protocols.transformer", "protocols.secure_model", "models", "models.approx", "models.bert",
    "models.gpt2", "models.ops", "models.weights", "models.data", "models.training", "models.thresholds",
]


def test_libraries_do_not_import_hydra_omegaconf_mlflow():
    code = (
        "import importlib, sys\n"
        f"for m in {LIBRARY_MODULES!r}:\n"
        "    importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'hydra', 'omegaconf', 'mlflow'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"library imports pulled in: {out.stdout.strip()}"


def test_protocols_do_not_import_torch():
    code = (
        "import importlib, sys\n"
        "for m in ['protocols.session', 'protocols.pruning', 'protocols.secure_model']:\n"
        "    importlib.import_module(m)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
