"""The front page and the docs site: the README stays a front page, every generated part (the CLI
reference, every results table) matches what generates it, and the site builds strictly."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.test_cli import rtk

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "results" / "r18-proxy" / "fast"  # a real committed run record
DOCS = sorted((ROOT / "docs").glob("*.md"))


def test_the_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; move detail to docs/"


def test_every_results_table_matches_its_records():
    """`make results` was run after the records last changed (else: run it and commit)."""
    result = rtk("report", "refresh", str(ROOT / "README.md"), *map(str, DOCS), "--check")
    assert result.exit_code == 0, result.output
    assert " 0 out of date" in result.stdout


def test_the_cli_reference_is_generated_from_the_app(tmp_path: Path):
    """docs/reference/cli.md is Typer's rendering of today's app (else: run `make docs`)."""
    fresh = tmp_path / "cli.md"
    command = [sys.executable, "-m", "typer", "toolkit.cli.app", "utils", "docs"]
    command += ["--name", "rtk", "--title", "CLI reference", "--output", str(fresh)]
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    committed = (ROOT / "docs" / "reference" / "cli.md").read_text()
    assert committed == fresh.read_text(), "docs/reference/cli.md is stale: run make docs"
    for option in ("--recipe", "--seeds", "--amp / --no-amp", "--provider", "--budget"):
        assert f"`{option}" in committed


def test_the_site_builds_strictly(tmp_path: Path):
    """A broken link, a missing anchor or a page outside the navigation fails the build."""
    mkdocs = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)]
    done = subprocess.run(mkdocs, capture_output=True, text=True, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "reference" / "cli" / "index.html").is_file()
    assert (tmp_path / "results" / "index.html").is_file()


def _page(tmp_path: Path, body: str) -> Path:
    shutil.copytree(RECORD, tmp_path / "records" / "proxy")
    page = tmp_path / "page.md"
    page.write_text(f"# Results\n\n{body}\nAfter the table.\n")
    return page


def test_refresh_writes_a_table_from_the_records_and_check_finds_it_stale(tmp_path: Path):
    page = _page(tmp_path, "<!-- rtk report compare records/proxy -->\nold table\n<!-- /rtk -->")
    check = rtk("report", "refresh", str(page), "--check")
    assert check.exit_code == 1
    assert f"{page}:3: rtk report compare records/proxy: differs from its records" in check.stdout
    assert "old table" in page.read_text()  # --check changes nothing

    assert rtk("report", "refresh", str(page)).exit_code == 0
    text = page.read_text()
    assert "old table" not in text and "| ResNet-18 (With Skip) | proxy | fast | 46.06% |" in text
    assert text.endswith("<!-- /rtk -->\nAfter the table.\n")  # the rest of the page is kept
    assert rtk("report", "refresh", str(page), "--check").exit_code == 0

    # A record that changes makes the committed table stale again.
    metrics = tmp_path / "records" / "proxy" / "metrics.json"
    metrics.write_text(metrics.read_text().replace('"test_acc": 0.4606', '"test_acc": 0.5'))
    assert rtk("report", "refresh", str(page), "--check").exit_code == 1


def test_an_ablation_block_names_what_each_run_changes(tmp_path: Path):
    page = _page(tmp_path, "<!-- rtk report compare --ablation records/proxy records/other -->\n"
                           "<!-- /rtk -->")  # fmt: skip
    other = tmp_path / "records" / "other"
    shutil.copytree(RECORD, other)
    config = other / "config.json"
    config.write_text(config.read_text().replace('"dropout": 0.5', '"dropout": 0.0'))
    assert rtk("report", "refresh", str(page)).exit_code == 0
    rows = [line for line in page.read_text().splitlines() if line.startswith("| ")]
    assert rows[1].startswith("| proxy | (the reference) | 46.06% |")
    assert rows[2].startswith("| other | dropout 0.0 | 46.06% |")


def test_bad_blocks_are_one_line_errors(tmp_path: Path):
    for body, problem in [
        ("<!-- rtk report curves records/proxy -->\n<!-- /rtk -->", "unknown report 'curves'"),
        ("<!-- rtk report compare records/proxy -->\nno end", "is not closed"),
        ("<!-- rtk report compare records/nowhere -->\n<!-- /rtk -->", "not a folder of run"),
        ("<!-- rtk report compare --json records/proxy -->\n<!-- /rtk -->", "takes no"),
    ]:
        page = _page(tmp_path / problem.replace(" ", "-"), body)
        before = page.read_text()
        result = rtk("report", "refresh", str(page))
        assert result.exit_code == 2, (body, result.output)
        assert problem in result.stderr and "Traceback" not in result.output
        assert page.read_text() == before
    missing = rtk("report", "refresh", str(tmp_path / "absent.md"))
    assert missing.exit_code == 2 and "is not a Markdown file" in missing.stderr
