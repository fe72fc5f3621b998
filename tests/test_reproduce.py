from __future__ import annotations

import dataclasses
from pathlib import Path

from PIL import Image

from analysis.reproduce import Budget, reproduce
from toolkit.data import load_dataset
from toolkit.models import architecture_names

TINY = Budget(
    name="tiny",
    reduction="1 epoch on 64 images per model (a test)",
    per_model={
        a: {"epochs": 1, "train_subset": 64, "batch_size": 32} for a in architecture_names()
    },
    val_size=50,
    grad_batches=1,
    bench_batches=(1,),
    bench_seconds=0.05,
    parity_images=50,
    train_bench_batch=2,
)
SECTIONS = [
    "## Setup", "## Table I", "## Per-class results", "## Gradient flow",
    "## Inference latency", "## Claims", "## Figures",
]  # fmt: skip


def test_reproduce_writes_every_section_and_resumes(imagefolder: Path, tmp_path: Path):
    dataset = load_dataset(imagefolder)
    said: list[str] = []
    result = reproduce(
        budget=TINY, models=architecture_names(), out=tmp_path, dataset=dataset,
        say=said.append,
    )  # fmt: skip
    text = result.report.read_text()
    positions = [text.index(section) for section in SECTIONS]
    assert positions == sorted(positions)
    assert "Budget `tiny`: 1 epoch on 64 images per model" in text
    assert "Trained under other settings" not in text
    for arch in architecture_names():
        assert f"| {arch} |" in text
        assert (tmp_path / "runs" / arch / "model.onnx").is_file()
    claims = text.split("## Claims")[1].split("## Figures")[0]
    assert claims.count("**") == 2 * len(result.verdicts) == 14
    assert {v.verdict for v in result.verdicts} <= {"supported", "not supported", "not measured"}
    for figure in result.figures:
        assert f"]({figure.relative_to(tmp_path)})" in text
        with Image.open(figure) as image:
            assert image.format == "PNG"
    # A rerun reuses every finished run and export.
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*/*.pt")}
    said.clear()
    longer = dataclasses.replace(
        TINY, per_model={"baseline-cnn": {**TINY.per_model["baseline-cnn"], "epochs": 2}}
    )
    reproduce(budget=longer, models=["baseline-cnn"], out=tmp_path, dataset=dataset,
              say=said.append)  # fmt: skip
    assert said[0].startswith("baseline-cnn: reused")
    # The reused run was trained for 1 epoch, not this budget's 2: the report says so.
    assert "baseline-cnn: epochs 1 (budget: 2)." in result.report.read_text()
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
