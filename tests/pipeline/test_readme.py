"""README.md and docs/results.md say what the committed results records say; each committed table
regenerates from its record alone by the command printed beside it; README.md stays short."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import pandas as pd
import pytest

from pipeline import results_page
from pipeline.config import PROJECT_ROOT
from pipeline.headline import BEGIN, END, render, update
from pipeline.record import RECORD
from tests.pipeline.conftest import run_cli

RECORDS = sorted(p.parent for p in (PROJECT_ROOT / "results").glob(f"*/{RECORD}"))


def test_readme_headline_block_is_the_records() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert render(PROJECT_ROOT / "results") in readme, "README.md disagrees with results/: run `python -m pipeline.headline`"
    assert len(readme.splitlines()) <= 250


def test_headline_block_from_a_record(tmp_path: Path) -> None:
    record = tmp_path / "results" / "table1"
    (record / "runs").mkdir(parents=True)
    pd.DataFrame({"model": ["minilm_l6"] * 2, "task": ["sst2"] * 2, "max_length": [128, 128], "protocol": ["CHEETAH"] * 2,
                  "method": ["none", "prune"], "label": ["BOLT w/o WE", "CipherPrune†"], "time_lan_s": [620.0, 137.16],
                  "comm_gb": [4.76, 1.06], "speedup_vs_none": [1.0, 4.52], "speedup_vs_bolt_we": [0.44, 1.99],
                  "inputs": [4, 4], "run_id": ["a", "b"]}).to_csv(record / "table1.csv", index=False)
    (record / "record.json").write_text(json.dumps({"machine": {"cores": 2, "memory_gib": 23.5}}))
    for name, load in (("a", "0.9"), ("b", "2.1")):
        (record / "runs" / f"{name}.json").write_text(json.dumps({"tags": {"load_1m": load}}))
    block = render(tmp_path / "results")
    assert block.startswith(BEGIN) and block.endswith(END)
    assert "| CipherPrune† |" in block and "137.16" in block and "4.52" in block and "| run_id" not in block
    assert "2 cores, 23.5 GiB, 1-min load 0.9-2.1 as runs started" in block
    assert "report.source=results/table1" in block
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{BEGIN}\nstale\n{END}\n\nrest\n")
    assert update(readme, tmp_path / "results") and not update(readme, tmp_path / "results")
    assert readme.read_text() == f"# x\n\n{block}\n\nrest\n"


def test_benchmark_commands_show_no_path_of_the_machine_that_ran_them() -> None:
    from pipeline.results_page import without_local_paths

    header = ("### 2026-12-08: `python -m pipeline stage=benchmark +benchmark.checkpoints.unpruned=/work/o/ck "
              "+benchmark.sources.rte=/data/glue benchmark.limit=277 paths.outputs=/work/o`")
    assert without_local_paths(header) == ("### 2026-12-08: `python -m pipeline stage=benchmark "
                                           "+benchmark.checkpoints.unpruned=<local path> +benchmark.sources.rte=<local path> "
                                           "benchmark.limit=277 paths.outputs=<local path>`")
    assert without_local_paths("| rte:128 | 50.18 |") == "| rte:128 | 50.18 |"


def test_results_page_is_the_records() -> None:
    page = (PROJECT_ROOT / "docs" / "results.md").read_text()
    assert page == results_page.render(PROJECT_ROOT / "results"), \
        "docs/results.md disagrees with results/: run `python -m pipeline.headline`"
    for record in RECORDS:
        assert f"`{json.loads((record / RECORD).read_text())['regenerate']}`" in page


@pytest.mark.parametrize("record", RECORDS, ids=[r.name for r in RECORDS])
def test_committed_tables_regenerate_from_their_record(record: Path, tmp_path: Path) -> None:
    """The record's printed command, run as a user runs it in a fresh clone (no store: a new one
    under ``tmp_path``), writes the committed tables byte for byte."""
    committed = [p for ext in ("md", "csv", "tex") for p in sorted(record.glob(f"table*.{ext}"))]
    command = shlex.split(json.loads((record / RECORD).read_text())["regenerate"])
    assert command[:3] == ["python", "-m", "pipeline"]
    done = run_cli(tmp_path, *command[3:])
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "reports" / record.name
    for table in committed:
        assert (out / table.name).read_text() == table.read_text(), f"{table} is stale: {' '.join(command)}"
