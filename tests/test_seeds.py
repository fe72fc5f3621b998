"""Seed groups: `rtk train --seeds`, the statistics over seeds, the three-way verdict and the
reports that read groups."""

from __future__ import annotations

import json
import math
import re
import shlex
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from analysis.claims import ablation_claim
from analysis.gradients import GradientProfile, LayerGradient
from analysis.report import CompareRow, runs_under
from analysis.seeds import estimate, paired_difference, percent
from analysis.sources import SourceError
from analysis.verdicts import both, judge_interval, paired_claim
from tests.conftest import TinyData, write_imagefolder
from tests.test_training import _InterruptAt
from toolkit.cli import app
from toolkit.training import RunDir, SeedGroup, SeedGroupError, load_checkpoint, make_config

TIMING = {"epoch_s", "images_per_s", "peak_mem_mb"}
QUICK = ["--epochs", "2", "--val-size", "50", "--batch-size", "32", "--device", "cpu", "--quiet"]
# Student's t quantiles for a two-sided 95% interval, from a printed t table.
T_975 = {1: 12.706205, 2: 4.302653}


def _rtk(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def _history(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in RunDir(run).read_history()]


def _test_acc(run: Path) -> float:
    return RunDir(run).read_metrics()["test_acc"]


# --- the statistics, on numbers worked out by hand ------------------------------------------


def test_mean_std_and_t_interval_by_hand():
    e = estimate("test_acc", [0, 1, 2], [0.80, 0.82, 0.84])
    assert e.n == 3 and e.mean == pytest.approx(0.82)
    # Deviations -0.02, 0, +0.02: squares sum to 8e-4, over n - 1 = 2 gives 4e-4, root 0.02.
    assert e.std == pytest.approx(0.02)
    half = T_975[2] * 0.02 / math.sqrt(3)  # 0.049683
    assert e.ci_low == pytest.approx(0.82 - half, abs=1e-6)
    assert e.ci_high == pytest.approx(0.82 + half, abs=1e-6)
    assert percent(e) == "82.00% ± 2.00 pt std, 95% CI [77.03%, 86.97%], n = 3"
    two = estimate("test_acc", [0, 1], [0.5, 0.7])  # std 0.1 * sqrt(2), one degree of freedom
    assert two.ci_high - two.mean == pytest.approx(T_975[1] * 0.1 * math.sqrt(2) / math.sqrt(2))


def test_one_seed_gives_no_interval_and_says_so():
    e = estimate("test_acc", [7], [0.81])
    assert (e.n, e.mean, e.std, e.ci_low, e.ci_high, e.interval) == (
        1,
        0.81,
        None,
        None,
        None,
        None,
    )
    assert percent(e) == "81.00%, n = 1 (no interval)"
    assert judge_interval(e.interval, 0.5) == "inconclusive"  # not "supported": no interval


def test_paired_difference_pairs_by_seed_by_hand():
    first = estimate("test_acc", [0, 1, 2], [0.80, 0.82, 0.84])
    second = estimate("test_acc", [2, 0, 1], [0.81, 0.78, 0.79])  # another order: paired by seed
    paired = paired_difference(first, second, first_label="a", second_label="b")
    d = paired.difference
    assert d.seeds == [0, 1, 2] and d.values == pytest.approx([0.02, 0.03, 0.03])
    # Mean 0.08 / 3; deviations -2/300, +1/300, +1/300: variance (6/90000) / 2, std 0.01/sqrt(3).
    assert d.mean == pytest.approx(0.08 / 3) and d.std == pytest.approx(0.01 / math.sqrt(3))
    half = T_975[2] * (0.01 / math.sqrt(3)) / math.sqrt(3)  # 0.014342
    assert d.interval == pytest.approx((0.08 / 3 - half, 0.08 / 3 + half), abs=1e-6)
    verdict = paired_claim(paired)
    assert verdict.verdict == "supported" and "+2.67 pt" in verdict.evidence
    with pytest.raises(SourceError, match="needs the same seeds: a has 0,1,2, b has 0,1"):
        paired_difference(
            first, estimate("test_acc", [0, 1], [0.8, 0.8]), first_label="a", second_label="b"
        )


def test_three_way_verdict_on_an_interval():
    assert judge_interval((0.01, 0.03), 0.0) == "supported"
    assert judge_interval((-0.03, -0.01), 0.0) == "not supported"
    assert judge_interval((-0.01, 0.02), 0.0) == "inconclusive"
    assert judge_interval((0.0, 0.02), 0.0) == "inconclusive"  # an end on the threshold
    assert judge_interval(None, 0.0) == "inconclusive"
    # A claim that the quantity stays below a limit (a memory ratio under 1.10, say).
    assert judge_interval((1.02, 1.06), 1.10, claimed="below") == "supported"
    assert judge_interval((1.12, 1.20), 1.10, claimed="below") == "not supported"
    assert judge_interval((1.05, 1.15), 1.10, claimed="below") == "inconclusive"


def _row(arch: str, acc: float, seeds: list[float] | None = None) -> CompareRow:
    return CompareRow(
        model=arch, arch=arch, run=arch, recipe="fast", test_acc=acc, paper_test_acc=0.9,
        train_min=1.0, paper_train_min=1.0, epochs=2, max_epochs=2, stopped_early=False,
        train_images=100, params=1, paper_params=1, device="cpu", precision="fp32",
        seeds=None if seeds is None else estimate("test_acc", [0, 1, 2], seeds),
    )  # fmt: skip


def _profile(model: str, first_rms: float) -> GradientProfile:
    """What ablation_claim reads of a profile: the first layer's gradient RMS."""
    layer = LayerGradient(
        name="conv1", kind="conv", depth=1, weights=1, norm_mean=first_rms, norm_std=0.0,
        rms_mean=first_rms,
    )  # fmt: skip
    return GradientProfile(
        model=model, at="best", batches=1, batch_size=1, layers=[layer], stages=[],
        first_last_norm_ratio=1.0, first_last_rms_ratio=1.0,
    )  # fmt: skip


def test_ablation_claim_on_groups_judges_the_paired_interval():
    flow = {"resnet18": _profile("resnet18", 0.03), "resnet18-noskip": _profile("n", 0.02)}
    # Single runs: one number each, as before (two-way).
    single = [_row("resnet18", 0.80), _row("resnet18-noskip", 0.78)]
    assert ablation_claim(single, flow).verdict == "supported"
    worse = [_row("resnet18", 0.70), _row("resnet18-noskip", 0.78)]
    assert ablation_claim(worse, flow).verdict == "not supported"
    # Groups: skips ahead by 2, 3, 3 points, seed by seed: the interval is above 0.
    ahead = [_row("resnet18", 0.81, [0.80, 0.82, 0.84]),
             _row("resnet18-noskip", 0.79, [0.78, 0.79, 0.81])]  # fmt: skip
    verdict = ablation_claim(ahead, flow)
    assert verdict.verdict == "supported" and "paired by seed: +2.67 pt" in verdict.evidence
    # Means 1.3 points apart, but the seeds disagree: the interval holds 0.
    noisy = [_row("resnet18", 0.81, [0.80, 0.86, 0.78]),
             _row("resnet18-noskip", 0.80, [0.83, 0.78, 0.79])]  # fmt: skip
    assert ablation_claim(noisy, flow).verdict == "inconclusive"
    behind = [_row("resnet18", 0.78, [0.77, 0.78, 0.79]),
              _row("resnet18-noskip", 0.80, [0.79, 0.80, 0.81])]  # fmt: skip
    assert ablation_claim(behind, flow).verdict == "not supported"
    # The gradient half fails: the claim fails whatever the accuracy says.
    weak = {"resnet18": _profile("resnet18", 0.02), "resnet18-noskip": _profile("n", 0.03)}
    assert ablation_claim(ahead, weak).verdict == "not supported"


# --- rtk train --seeds and the reports, on real tiny runs -----------------------------------


@dataclass(frozen=True)
class Trained:
    data: Path
    runs: Path
    groups: list[dict]  # what `rtk train --seeds ... --json` printed


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_data: TinyData) -> Trained:
    """Two groups of three seeds (baseline CNN and Mini-ResNet, one command) and a plain run of
    seed 1, each two tiny epochs."""
    root = tmp_path_factory.mktemp("seeds")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RTK_CACHE_DIR", str(root / "cache"))
        data = write_imagefolder(root / "data", tiny_data)
        where = ["--data", data, "--out", root / "runs"]
        result = _rtk("train", "baseline-cnn", "mini-resnet", "--seeds", "0,1,2", *QUICK, *where,
                      "--name", "g", "--json")  # fmt: skip
        assert result.exit_code == 0, result.output
        plain = _rtk("train", "baseline-cnn", "--seed", "1", *QUICK, *where, "--name", "plain")
        assert plain.exit_code == 0, plain.output
    return Trained(data, root / "runs", json.loads(result.stdout))


def test_a_seed_group_is_ordinary_runs_that_differ_and_reproduce(trained: Trained):
    group = trained.runs / "g-baseline-cnn"
    assert [g["group"] for g in trained.groups] == [str(group), str(trained.runs / "g-mini-resnet")]
    summary = trained.groups[0]
    assert set(summary) == {"group", "arch", "recipe", "seeds", "runs", "estimates"}
    assert summary["arch"] == "baseline-cnn" and summary["seeds"] == [0, 1, 2]
    assert {p.name for p in group.iterdir()} == {"group.json", "seed-0", "seed-1", "seed-2"}
    manifest = json.loads((group / "group.json").read_text())
    assert manifest["arch"] == "baseline-cnn" and manifest["seeds"] == [0, 1, 2]
    assert "seed" not in manifest["settings"] and manifest["settings"]["epochs"] == 2
    for seed in (0, 1, 2):
        run = group / f"seed-{seed}"
        assert RunDir(run).read_config()["settings"]["seed"] == seed
        assert summary["runs"][seed]["test_acc"] == _test_acc(run)
    # Each seed folder is an ordinary run that every command reads.
    compare = _rtk("report", "compare", group / "seed-0", "--json")
    assert compare.exit_code == 0 and json.loads(compare.stdout)[0]["seeds"] is None
    # The seeds differ from one another; seed 1 is exactly a plain `--seed 1` run.
    histories = [_history(group / f"seed-{seed}") for seed in (0, 1, 2)]
    assert histories[0] != histories[1] != histories[2] != histories[0]
    assert histories[1] == _history(trained.runs / "plain")
    assert _test_acc(group / "seed-1") == _test_acc(trained.runs / "plain")
    # The summary is the three metrics.json figures' mean, worked out here.
    accs = [_test_acc(group / f"seed-{seed}") for seed in (0, 1, 2)]
    (acc,) = [e for e in summary["estimates"] if e["metric"] == "test_acc"]
    assert acc["values"] == accs and acc["mean"] == pytest.approx(sum(accs) / 3)
    assert acc["n"] == 3 and acc["ci_low"] <= acc["mean"] <= acc["ci_high"]


def test_report_seeds_compare_and_curves_read_groups(trained: Trained, tmp_path: Path):
    first, second = trained.runs / "g-mini-resnet", trained.runs / "g-baseline-cnn"
    result = _rtk("report", "seeds", first, second, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) == {"groups", "paired", "verdicts"} and len(report["groups"]) == 2
    (paired,) = report["paired"]  # the paper's recipe measures no flip TTA: test_acc only
    by_hand = [_test_acc(first / f"seed-{s}") - _test_acc(second / f"seed-{s}") for s in (0, 1, 2)]
    assert paired["difference"]["values"] == pytest.approx(by_hand)
    assert (paired["first"], paired["second"]) == ("g-mini-resnet", "g-baseline-cnn")
    d = paired["difference"]
    expected = judge_interval((d["ci_low"], d["ci_high"]), 0.0)
    assert [v["verdict"] for v in report["verdicts"]] == [expected]
    text = _rtk("report", "seeds", first, second)
    assert text.exit_code == 0 and "95% CI" in text.stdout and f": {expected}" in text.stdout
    # Table I: a group's row gives mean, spread, interval and n; a single run's stays as it was.
    table = _rtk("report", "compare", second, trained.runs / "plain", "--json")
    assert table.exit_code == 0, table.output
    group_row, plain_row = json.loads(table.stdout)
    assert group_row["run"] == "g-baseline-cnn" and group_row["seeds"]["n"] == 3
    accs = [_test_acc(second / f"seed-{s}") for s in (0, 1, 2)]
    assert group_row["test_acc"] == pytest.approx(sum(accs) / 3)
    assert plain_row["seeds"] is None and plain_row["test_acc"] == _test_acc(trained.runs / "plain")
    markdown = tmp_path / "table.md"
    assert _rtk("report", "compare", second, "--markdown", markdown).exit_code == 0
    assert "pt std, 95% CI [" in markdown.read_text() and ", n = 3 |" in markdown.read_text()
    # Every run and group under --runs, each once (a group's seeds are not rows of their own).
    found = _rtk("report", "compare", "--runs", trained.runs, "--json")
    assert sorted(r["run"] for r in json.loads(found.stdout)) == [
        "g-baseline-cnn", "g-mini-resnet", "plain",
    ]  # fmt: skip
    curves = _rtk("report", "curves", second, trained.runs / "plain", "--plot", tmp_path / "c.png")
    assert curves.exit_code == 0, curves.output
    with Image.open(tmp_path / "c.png") as image:
        assert image.format == "PNG" and image.size[0] > 400


def test_analyses_name_a_seed_run_by_its_group(trained: Trained):
    """Every group's runs are seed-0, seed-1, ...: a lesion study of two groups' seed 0 must
    tell them apart (it read "seed-0 keeps more than seed-0")."""
    mini = trained.runs / "g-mini-resnet" / "seed-0"
    where = ["--data", trained.data, "--at", "best", "--json"]
    result = _rtk("analyze", "residuals", mini, trained.runs / "plain", *where)
    assert result.exit_code == 0, result.output
    labels = [p["model"] for p in json.loads(result.stdout)]
    assert labels == ["g-mini-resnet/seed-0", "plain"]  # a lone run keeps its folder's name


def _mean_curve(group: Path, seeds: tuple[int, ...]) -> list[float]:
    rows = [_history(group / f"seed-{s}") for s in seeds]
    return [sum(r[i]["val_acc"] for r in rows) / len(rows) for i in range(len(rows[0]))]


def _first_layer_flows(group: Path, seeds: tuple[int, ...]) -> list[float]:
    """Per seed, the first layer's gradient norm as its history.jsonl recorded it, averaged
    over the epochs."""
    per_seed = []
    for seed in seeds:
        norms = [r["grad_norms"] for r in _history(group / f"seed-{seed}")]
        first = next(iter(norms[0]))
        per_seed.append(sum(n[first] for n in norms) / len(norms))
    return per_seed


def test_report_claims_judges_the_papers_claims_from_seed_groups(trained: Trained, tmp_path: Path):
    """The README's claims come from committed records: claims 1, 2, 4 and 5(ii) and each
    residual/plain pair, judged on paired intervals over seeds, the gradient half of claim 4 on
    the norms training recorded."""
    where = ["--data", trained.data, "--out", tmp_path]
    pair = _rtk("train", "resnet18", "resnet18-noskip", "--seeds", "0,1,2", *QUICK, "--epochs",
                "1", *where, "--name", "r")  # fmt: skip
    assert pair.exit_code == 0, pair.output
    skip, plain = tmp_path / "r-resnet18", tmp_path / "r-resnet18-noskip"
    groups = [trained.runs / "g-baseline-cnn", trained.runs / "g-mini-resnet", skip, plain]
    result = _rtk("report", "claims", *groups, "--json")
    assert result.exit_code == 0, result.output
    verdicts = {v["claim"].split(" ")[0]: v for v in json.loads(result.stdout)}
    assert set(verdicts) >= {"1.", "2.", "4.", "5(ii).", "resnet18", "the"}
    seeds = (0, 1, 2)
    # Claim 4: the accuracy half is `rtk report seeds`' paired verdict; the gradient half
    # compares the first layer's recorded norms.
    said = json.loads(_rtk("report", "seeds", skip, plain, "--json").stdout)["verdicts"][0]
    with_skips, without = _first_layer_flows(skip, seeds), _first_layer_flows(plain, seeds)
    ablation = verdicts["4."]
    assert "paired by seed" in ablation["evidence"] and "n = 3" in ablation["evidence"]
    means = f"{sum(without) / 3:.3g} without skips vs {sum(with_skips) / 3:.3g} with"
    assert means in ablation["evidence"]
    differences = [a - b for a, b in zip(with_skips, without, strict=True)]
    flow = judge_interval(estimate("flow", list(seeds), differences).interval, 0.0)
    assert ablation["verdict"] == both(said["verdict"], flow)
    # The pair on its own: the very verdict `rtk report seeds` gives.
    assert verdicts["resnet18"]["verdict"] == said["verdict"]
    # Claim 2: each residual network against its plain twin on the mean curves over seeds.
    curves = {g.name: _mean_curve(g, seeds) for g in groups}
    ahead = sum(a > b for a, b in zip(curves[skip.name], curves[plain.name], strict=False))
    assert f"resnet18 ahead of resnet18-noskip in {ahead}/1 epochs" in verdicts["2."]["evidence"]
    mini, base = curves["g-mini-resnet"], curves["g-baseline-cnn"]
    ahead = sum(a > b for a, b in zip(mini, base, strict=True))
    assert f"mini-resnet ahead of baseline-cnn in {ahead}/2 epochs" in verdicts["2."]["evidence"]
    # Claim 1's lead over the baseline: paired by seed, with an interval.
    assert "ResNet-18 - baseline, paired by seed:" in verdicts["1."]["evidence"]
    # A results block writes the same verdicts into Markdown.
    page = tmp_path / "claims.md"
    names = " ".join(str(g) for g in groups)
    page.write_text(f"<!-- rtk report claims {names} -->\n<!-- /rtk -->\n")
    assert _rtk("report", "refresh", page).exit_code == 0
    text = page.read_text()
    for v in verdicts.values():
        assert f"| {v['claim']} | **{v['verdict']}** |" in text
    # One run or group per model: a second one is refused in one line.
    twice = _rtk("report", "claims", *groups, trained.runs / "plain")
    assert twice.exit_code == 2 and "are both baseline-cnn" in twice.stderr
    assert "Traceback" not in twice.output


def test_a_seed_trained_under_other_settings_is_refused(trained: Trained, tmp_path: Path):
    copy = shutil.copytree(trained.runs / "g-baseline-cnn", tmp_path / "g")
    config = json.loads((copy / "seed-2" / "config.json").read_text())
    config["settings"]["lr"] = 0.5
    (copy / "seed-2" / "config.json").write_text(json.dumps(config))
    result = _rtk("report", "seeds", copy)
    assert result.exit_code == 2 and "under other settings than its group's (lr differ)" in (
        result.stderr
    )


@pytest.mark.parametrize("fault", ["swapped", "linked"])
def test_a_seed_folder_holding_another_seed_is_refused(
    trained: Trained, tmp_path: Path, fault: str
):
    """Swapped seed folders or one linked to another gave a wrong spread with exit 0: each
    folder's run must hold the seed its name says."""
    copy = shutil.copytree(trained.runs / "g-baseline-cnn", tmp_path / "g")
    if fault == "swapped":
        (copy / "seed-0").rename(copy / "seed-x")
        (copy / "seed-1").rename(copy / "seed-0")
        (copy / "seed-x").rename(copy / "seed-1")
    else:
        shutil.rmtree(copy / "seed-1")
        (copy / "seed-1").symlink_to(copy / "seed-0", target_is_directory=True)
    plot = tmp_path / "curves.png"
    for command in (
        ("report", "seeds", copy),
        ("report", "compare", copy),
        ("report", "curves", copy, "--plot", plot),  # plotted seed 0 twice, exit 0
    ):
        result = _rtk(*command)
        assert result.exit_code == 2, result.output
        said = (
            "seed-0 holds a run of seed 1, not seed 0"
            if fault == "swapped"
            else ("seed-1 holds a run of seed 0, not seed 1")
        )
        assert f"{copy}/{said}" in " ".join(result.stderr.split())
        assert "Traceback" not in result.output
    assert not plot.exists()


def test_a_seed_folder_linked_outside_its_group_is_never_trained_into(
    trained: Trained, tmp_path: Path
):
    """A group's seed-N linked to a folder elsewhere was trained into with exit 0."""
    copy = shutil.copytree(trained.runs / "g-baseline-cnn", tmp_path / "g")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(copy / "seed-1")
    (copy / "seed-1").symlink_to(elsewhere, target_is_directory=True)
    result = _rtk("train", "--resume", copy, "--data", trained.data, "--quiet")
    assert result.exit_code == 2, result.output
    assert (
        f"{copy}/seed-1 is a symbolic link; rtk writes a run only inside its own output folder"
        in " ".join(result.stderr.split())
    )
    assert not any(elsewhere.iterdir())


def test_a_group_resumes_without_retraining_finished_seeds(
    imagefolder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    where = ["--data", imagefolder, "--out", tmp_path]
    made: list[int] = []

    def observer(out: object, *, progress: bool) -> _InterruptAt:
        made.append(1)  # one terminal observer per seed: Ctrl-C in seed 1's second epoch
        return _InterruptAt(2 if len(made) == 2 else 0)

    monkeypatch.setattr("toolkit.cli.train.RichObserver", observer)
    args = ["train", "baseline-cnn", "--seeds", "0,1,2", *QUICK[:-1], *where, "--name", "my g"]
    cut = _rtk(*args)
    group = tmp_path / "my g"
    assert cut.exit_code == 130
    # The command it prints runs as printed: quoted, and on the group's own data.
    rerun = re.search(r"rerun `([^`]*)` to continue", " ".join(cut.stderr.split()))
    assert rerun is not None, cut.stderr
    assert shlex.split(rerun.group(1)) == [
        "rtk", "train", "--resume", str(group), "--data", str(imagefolder)
    ]  # fmt: skip
    assert RunDir(group / "seed-0").finished and not (group / "seed-2").exists()
    kept = load_checkpoint(group / "seed-1" / "last.pt")
    assert kept["epoch"] == 1 and not RunDir(group / "seed-1").finished
    assert runs_under(tmp_path) == []  # an unfinished group is no row of Table I yet
    seed0 = {p.name: p.stat().st_mtime_ns for p in (group / "seed-0").iterdir()}
    monkeypatch.undo()

    resumed = _rtk(*shlex.split(rerun.group(1))[1:], "--quiet", "--json")
    assert resumed.exit_code == 0, resumed.output
    assert [r["seed"] for r in json.loads(resumed.stdout)["runs"]] == [0, 1, 2]
    assert {p.name: p.stat().st_mtime_ns for p in (group / "seed-0").iterdir()} == seed0
    # Seed 1 kept its first epoch (the very same record, timing included) and trained the rest.
    rows = RunDir(group / "seed-1").read_history()
    assert rows[0] == kept["history"][0] and [r["epoch"] for r in rows] == [1, 2]
    assert RunDir(group / "seed-2").finished
    plain = _rtk("train", "baseline-cnn", "--seed", "1", *QUICK, *where, "--name", "plain")
    assert plain.exit_code == 0, plain.output
    assert _history(group / "seed-1") == _history(tmp_path / "plain")
    again = _rtk("train", "--resume", group, "--data", imagefolder, "--quiet")
    assert again.exit_code == 0 and "test_acc" in again.stdout  # every seed reused
    assert {p.name: p.stat().st_mtime_ns for p in (group / "seed-0").iterdir()} == seed0


def test_a_new_group_may_take_an_empty_folder_or_a_killed_manifest_write_only(tmp_path: Path):
    config = make_config("baseline-cnn", epochs=1)
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / ".group.json.k2j4.tmp").write_text("{")  # a kill mid-write leaves this
    group = SeedGroup.create(tmp_path / "g", config, (3, 1), data="/data")
    assert [p.name for p in (tmp_path / "g").iterdir()] == ["group.json"]
    assert SeedGroup.open(tmp_path / "g") == group and group.config(1) == replace(config, seed=1)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(SeedGroupError, match="already exists and is not a seed group"):
        SeedGroup.create(tmp_path / "other", config, (0,), data="/data")


def test_convergence_skips_epochs_without_validation():
    """A run trained with --val-size 0 has no validation accuracy: no comparison, no crash."""
    from analysis.claims import convergence_claim

    none = [{"epoch": 1, "val_acc": None}, {"epoch": 2, "val_acc": None}]
    some = [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.6}]
    assert convergence_claim({"mini-resnet": none, "baseline-cnn": some}).verdict == (
        "not measured"
    )
    verdict = convergence_claim({"mini-resnet": some, "baseline-cnn": [some[0], none[1]]})
    assert "ahead of baseline-cnn in 0/1 epochs" in verdict.evidence


def test_a_full_disk_writing_group_json_names_it_and_trains_nothing(
    imagefolder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A full disk while the manifest was written named a temporary file (or no file)."""
    import errno

    real = Path.write_text

    def full_disk(self: Path, *args: object, **kwargs: object) -> int:
        if self.name.startswith(".group.json."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", full_disk)
    where = ["--data", imagefolder, "--out", tmp_path, "--name", "g"]
    result = _rtk("train", "baseline-cnn", "--seeds", "0,1", *QUICK, *where)
    assert result.exit_code == 2, result.output
    said = " ".join(result.stderr.split())
    assert f"cannot write {tmp_path / 'g' / 'group.json'} (No space left on device)" in said
    assert "free disk space" in said and "Traceback" not in result.output
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == []  # no seed, no temp file
