"""GLUE loaders on tiny tsv files written here; real row counts when ``$CIPHERPRUNE_DATA`` holds a copy."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from models.data import compute_metrics, load_glue, load_glue_raw
from models.synthetic import write_synthetic_task

DATA = Path(os.environ.get("CIPHERPRUNE_DATA", "/nonexistent"))
GLUE = DATA / "glue"


def _write(p: Path, text: str, bom: bool = False) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())


@pytest.fixture()
def glue_dir(tmp_path: Path) -> Path:
    g = tmp_path / "glue"
    for s in ("train", "dev"):
        _write(g / "SST-2" / f"{s}.tsv", "sentence\tlabel\nit 's a w1 journey . \t1\nnull and \" void \t0\n")
        _write(g / "MRPC" / f"{s}.tsv", "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
               "1\t1\t2\tHe said w1 .\t\" w1 said .\n0\t3\t4\ta b\tc d\n", bom=True)
        _write(g / "CoLA" / f"{s}.tsv", "gj04\t1\t\tThe w1 sank.\ngj04\t0\t*\tw1 the sank.")
        _write(g / "STS-B" / f"{s}.tsv", "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\t"
               "sentence1\tsentence2\tscore\n0\tg\tf\t2012\t1\tnone\tnone\tA w1.\tA w2.\t5.000\n"
               "1\tg\tf\t2012\t1\tnone\tnone\tB.\tC.\t1.250\n")
    _write(g / "QNLI" / "dev.tsv", "index\tquestion\tsentence\tlabel\n0\tWhat?\t\"Quoted w1\tnot_entailment\n")
    return g


def test_local_layouts(glue_dir: Path, tmp_path: Path) -> None:
    c = str(tmp_path / "cache")
    sst = load_glue_raw("sst2", glue_dir, cache_dir=c)["dev"]
    assert sst[0] == {"text_a": "it 's a w1 journey .", "label": 1} and sst[1]["text_a"] == "null and \" void"
    mrpc = load_glue_raw("mrpc", glue_dir, cache_dir=c)["train"]  # BOM header
    assert mrpc[0] == {"text_a": "He said w1 .", "text_b": "\" w1 said .", "label": 1}
    cola = load_glue_raw("cola", glue_dir, cache_dir=c)["dev"]  # no header, no final newline
    assert len(cola) == 2 and cola[1] == {"text_a": "w1 the sank.", "label": 0}
    assert load_glue_raw("stsb", glue_dir, cache_dir=c)["dev"][1]["label"] == 1.25
    assert load_glue_raw("qnli", glue_dir, splits=("dev",), cache_dir=c)["dev"][0]["label"] == 1
    with pytest.raises(FileNotFoundError, match=r"QNLI/train\.tsv"):
        load_glue_raw("qnli", glue_dir, cache_dir=c)
    with pytest.raises(FileNotFoundError, match=r"MNLI/train\.tsv"):
        load_glue_raw("mnli", glue_dir, cache_dir=c)
    with pytest.raises(ValueError, match="unknown GLUE task"):
        load_glue_raw("wnli", glue_dir)


def test_tokenise_truncate_and_reject(glue_dir: Path, tmp_path: Path) -> None:
    tok = write_synthetic_task(tmp_path / "tok", n_train=4, n_dev=4)
    c = str(tmp_path / "cache")
    d = load_glue("mrpc", tok, glue_dir, max_length=8, cache_dir=c)
    assert d["dev"][0]["input_ids"].shape == (8,) and int(d["dev"][1]["token_type_ids"].sum()) == 3
    assert int(d["dev"][0]["attention_mask"].sum()) == 8  # truncated
    with pytest.raises(ValueError, match=r"mrpc/train example 0 has \d+ tokens > max_length 8"):
        load_glue("mrpc", tok, glue_dir, max_length=8, truncation="reject", cache_dir=c)


def test_metrics() -> None:
    y = np.array([1, 0, 1, 1])
    m = compute_metrics("mrpc", np.array([1, 0, 0, 1]), y)
    assert m["accuracy"] == 75.0 and abs(m["f1"] - 80.0) < 1e-9 and m["metric"] == m["f1"]
    s = compute_metrics("stsb", np.array([0.1, 0.5, 0.4, 0.9]), np.array([0.0, 2.0, 1.0, 5.0]))
    assert abs(s["spearman"] - 100.0) < 1e-9 and 90 < s["pearson"] < 100
    assert compute_metrics("sst2", np.array([1, 1]), np.array([1, 0]))["metric"] == 50.0


@pytest.mark.skipif(not GLUE.is_dir(), reason="real GLUE tsv files: set CIPHERPRUNE_DATA=<dir holding glue/>")
def test_real_row_counts(tmp_path: Path) -> None:
    c = str(tmp_path / "cache")
    assert len(load_glue_raw("sst2", GLUE, splits=("dev",), cache_dir=c)["dev"]) == 872
    assert len(load_glue_raw("mrpc", GLUE, splits=("dev",), cache_dir=c)["dev"]) == 408
    assert len(load_glue_raw("rte", GLUE, splits=("dev",), cache_dir=c)["dev"]) == 277
    assert len(load_glue_raw("cola", GLUE, splits=("dev",), cache_dir=c)["dev"]) == 1043
    assert len(load_glue_raw("qnli", GLUE, splits=("dev",), cache_dir=c)["dev"]) == 5463
    assert load_glue_raw("stsb", GLUE, splits=("dev",), cache_dir=c)["dev"][0]["label"] == 5.0


def test_imdb_layout_quotes_kept(tmp_path: Path) -> None:
    """IMDB: ``imdb/{train,test}.tsv`` (dev = test), read with QUOTE_NONE (reviews contain ``"``)."""
    root = tmp_path / "data"
    for name in ("train", "test"):
        _write(root / "imdb" / f"{name}.tsv", 'sentence\tlabel\nA "so-called" film .  Dull.\t0\nGreat , "great" !\t1\n')
    raw = load_glue_raw("imdb", root, cache_dir=str(tmp_path / "cache"))
    assert raw["dev"]["text_a"] == ['A "so-called" film .  Dull.', 'Great , "great" !'] and raw["dev"]["label"] == [0, 1]


IMDB = DATA / "imdb"


@pytest.mark.skipif(not IMDB.is_dir(), reason="real IMDB reviews: set CIPHERPRUNE_DATA=<dir holding imdb/>")
def test_real_imdb_counts(tmp_path: Path) -> None:
    raw = load_glue_raw("imdb", IMDB.parent, cache_dir=str(tmp_path / "cache"))
    for split in ("train", "dev"):
        labels = np.asarray(raw[split]["label"])
        assert len(labels) == 25_000 and labels.sum() == 12_500      # the README's counts
        assert labels[:12_500].sum() == 0                            # grouped by label: shuffle before subsetting


@pytest.mark.parametrize(("task", "folder", "content", "message"), [
    ("sst2", "SST-2", b"sentence\tscore\na film .\t1\n", r"SST-2/dev\.tsv: missing column\(s\) \['label'\]; found \['sentence', 'score'\]"),
    ("sst2", "SST-2", b"sentence\tlabel\na film .\t1\ndull .\tpositive\n",
     r"SST-2/dev\.tsv row 1, line 3: unknown label 'positive' for sst2; expected an integer in \[0, 2\)"),
    ("sst2", "SST-2", b"sentence\tlabel\na film .\t1\ndull .\t2\n", r"SST-2/dev\.tsv row 1, line 3: unknown label 2 for sst2"),
    ("sst2", "SST-2", b"sentence\tlabel\na film .\t1\ndull .\t0.5\n", r"row 1, line 3: unknown label 0\.5 for sst2"),
    ("rte", "RTE", b"index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tc\td\tmaybe\n",
     r"RTE/dev\.tsv row 1, line 3: unknown label 'maybe' for rte; expected one of \['entailment', 'not_entailment'\]"),
    ("stsb", "STS-B", b"sentence1\tsentence2\tscore\na\tb\t4.5\nc\td\tn/a\n",
     r"STS-B/dev\.tsv row 1, line 3: label 'n/a' is not a finite number"),
    ("sst2", "SST-2", b"sentence\tlabel\nun caf\xe9 .\t1\n", r"SST-2/dev\.tsv: not UTF-8 text: bytes b'\\xe9 \.\\t' at line 2"),
    ("sst2", "SST-2", b"sentence\tlabel\n", r"SST-2/dev\.tsv: no data rows"),
    ("sst2", "SST-2", b"", r"SST-2/dev\.tsv: no data rows"),
])
def test_bad_tsv_is_refused_naming_file_row_and_value(tmp_path: Path, task: str, folder: str, content: bytes,
                                                      message: str) -> None:
    (tmp_path / "glue" / folder).mkdir(parents=True)
    (tmp_path / "glue" / folder / "dev.tsv").write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_glue_raw(task, tmp_path / "glue", splits=("dev",), cache_dir=str(tmp_path / "cache"))
