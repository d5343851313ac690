"""What identifies a stage's result: the config sections that decide it, its upstream runs and the
code version, hashed by one function (``identity_key``). MLflow-free (``pipeline.tracking`` tags runs
with these keys; resume and the upstream lookup search for them)."""
from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import asdict, dataclass, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Mapping, Optional

from pipeline.config import LATE_SECTIONS, STAGE_INPUTS, PipelineConfig, Stage


def plain(obj: Any) -> Any:
    """Dataclasses / enums / paths to JSON-friendly builtins."""
    if is_dataclass(obj):
        return {k: plain(v) for k, v in asdict(obj).items()}
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj




CODE_DIRS = ("protocols", "models", "pipeline", "conf", "pyproject.toml")


@dataclass(frozen=True)
class CodeVersion:
    """Which code produced a run.

    ``sha`` is the commit checked out (``<sha>+<hash of the diff>`` when ``CODE_DIRS`` differ
    from it), tagged ``git_sha`` so a run names its commit. ``tree`` hashes the content of
    ``CODE_DIRS`` only (their git tree ids, the uncommitted diff and untracked files in them),
    tagged ``code_tree`` and used in the resume key: a commit touching only docs, results or
    tests keeps ``tree``, so a relaunch resumes the finished (config, input) pairs instead of
    recomputing hours of secure runs; any change to code or config changes it.
    """

    sha: str
    dirty: bool
    tree: str

    @property
    def tags(self) -> dict[str, str]:
        return {"git_sha": self.sha, "git_dirty": str(self.dirty), "code_tree": self.tree}


def _git(root: str, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout


def code_version(root: str) -> CodeVersion:
    """The ``CodeVersion`` of the checkout at ``root`` (``unknown``, dirty, outside git)."""
    try:
        sha = _git(root, "rev-parse", "HEAD").strip()
        trees = _git(root, "rev-parse", *(f"HEAD:{path}" for path in CODE_DIRS))
        diff = _git(root, "diff", "HEAD", "--", *CODE_DIRS)
        untracked = _git(root, "ls-files", "--others", "--exclude-standard", "-z", "--", *CODE_DIRS)
    except (OSError, subprocess.CalledProcessError):
        return CodeVersion("unknown", True, "unknown")
    digest = hashlib.sha256((trees + diff).encode())
    for name in sorted(filter(None, untracked.split("\0"))):
        digest.update(name.encode() + b"\0" + (Path(root) / name).read_bytes())
    dirty = bool(diff or untracked)
    if dirty:
        sha = f"{sha}+{hashlib.sha256((diff + untracked).encode()).hexdigest()[:10]}"
    return CodeVersion(sha, dirty, digest.hexdigest()[:16])


RESUME_IGNORED: dict[Stage, dict[str, tuple[str, ...]]] = {
    Stage.secure_eval: {"secure_eval": ("num_examples", "methods", "generate_tokens")},
}
"""Per stage, the config keys that only say how many or which units are run: a unit's result does
not depend on them, so a relaunch with other values still reuses the units that FINISHED."""
LOCAL_PATHS: dict[str, tuple[str, ...]] = {"data": ("glue_dir", "wikitext_dir", "tokenizer_dir")}
"""Where this machine keeps the data: not part of any identity (another clone or machine keeps the
same files elsewhere)."""


def identity_key(cfg: PipelineConfig, stage: Stage, *, upstream: Optional[Mapping[str, str]] = None,
                 code: Optional[str] = None, ignored: Optional[Mapping[str, tuple[str, ...]]] = None,
                 local: bool = False) -> str:
    """The one identity hash (16 hex digits) of ``stage``'s result under ``cfg``: its config sections
    (``pipeline.config.STAGE_INPUTS``) less the ``ignored`` keys per section and, unless ``local``, less where this
    machine keeps the data (``LOCAL_PATHS``), with, when given, its upstream runs' identities
    (``Tracker.lineage``) and the code tree (``CodeVersion.tree``); a ``LATE_SECTIONS`` section at its
    defaults is left out. Equal keys: the same result,
    computed once, on any machine.

    Uses: without upstream and code, the tag ``sections_hash`` (the latest FINISHED run of a stage
    for a config); with ``local``, the prepare cache on this machine; with upstream and code, the tag
    ``config_hash`` (a stage run to reuse); with ``ignored=RESUME_IGNORED[stage]``, a unit's
    ``resume_key`` (one secure_eval batch; a shared baseline with the candidates' own keys ignored)."""
    sections = {name: plain(getattr(cfg, name)) for name in STAGE_INPUTS[stage].sections
                if not (name in LATE_SECTIONS and getattr(cfg, name) == type(getattr(cfg, name))())}
    for section, keys in [*(() if local else LOCAL_PATHS.items()), *(ignored or {}).items()]:
        if section in sections:
            sections[section] = {k: v for k, v in sections[section].items() if k not in keys}
    blob: dict[str, Any] = {"sections": sections}
    if upstream is not None:
        blob["upstream"] = dict(upstream)
    if code is not None:
        blob["code"] = code
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]
