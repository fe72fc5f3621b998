"""Your own model (docs/your-own-model.md): the page's module, written to a file outside rtk's
tree, registered through RTK_MODELS, then trained, exported, predicted, benchmarked and reported
with the real CLI; and the refusals when the module is missing or broken."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "your-own-model.md"
RTK = str(Path(sys.executable).with_name("rtk"))


def _rtk(*args: object, models: str | None, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RTK_MODELS"}
    env |= {"OMP_NUM_THREADS": "1", "COLUMNS": "400"}
    if models is not None:
        env["RTK_MODELS"] = models
    return subprocess.run([RTK, *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=cwd, check=False, timeout=600)  # fmt: skip


@pytest.fixture(scope="module")
def module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The page's Python block, as the user would save it: outside rtk's tree."""
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
    assert len(blocks) == 1
    path = tmp_path_factory.mktemp("mine") / "mymodels.py"
    path.write_text(blocks[0])
    return path


def test_a_model_of_your_own_goes_through_every_command(
    module: Path, imagefolder: Path, tmp_path: Path
):
    mine = str(module)
    listed = _rtk("models", "--json", models=mine, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert '"tinynet"' in listed.stdout and '"user"' in listed.stdout
    data = ["--data", imagefolder]
    trained = _rtk("train", "tinynet", "--recipe", "fast", "--epochs", "1", "--val-size", "40",
                   *data, "--name", "tiny", "--quiet", models=mine, cwd=tmp_path)  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    run = tmp_path / "runs" / "tiny"
    exported = _rtk("export", run, "--onnx", *data, models=mine, cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert (run / "model.onnx").is_file()
    image = next((imagefolder / "test" / "cat").iterdir())
    predicted = _rtk("predict", run / "model.onnx", image, models=mine, cwd=tmp_path)
    assert predicted.returncode == 0 and "%" in predicted.stdout, predicted.stderr
    benched = _rtk("bench", run, "--batch-sizes", "1", "--seconds", "0.1", "--runs",
                   tmp_path / "runs", "--json", models=mine, cwd=tmp_path)  # fmt: skip
    assert benched.returncode == 0, benched.stderr
    rows = json.loads(benched.stdout)["rows"]
    assert {(r["arch"], r["precision"], r["engine"]) for r in rows} == {
        ("tinynet", "fp32", "onnxruntime"), ("tinynet", "fp32", "torch-eager")
    }  # fmt: skip
    report = _rtk("report", "confusion", run, *data, "--plot", tmp_path / "c.png", models=mine,
                  cwd=tmp_path)  # fmt: skip
    assert report.returncode == 0 and (tmp_path / "c.png").is_file(), report.stderr
    # A network without residual blocks has nothing for a lesion study: one line.
    lesion = _rtk("analyze", "lesion", run, *data, models=mine, cwd=tmp_path)
    assert lesion.returncode == 2 and "has no residual blocks" in lesion.stderr
    # Without its module, the checkpoint names it and says how to load it, in one line.
    lost = _rtk("export", run, "--onnx", *data, models=None, cwd=tmp_path)
    assert lost.returncode == 2, lost.stderr
    assert lost.stderr.strip().splitlines()[-1] == (  # after export's opset notice
        f"error: {run}/best.pt holds 'tinynet', a model of your module 'mymodels' "
        "(mymodels:TinyNet), which is not loaded: name its file or module in RTK_MODELS"
    )


@pytest.mark.parametrize(
    ("source", "said"),
    [
        ("def broken(:\n", "cannot load the models of {path} (from RTK_MODELS): SyntaxError"),
        ("from toolkit.models import Classifier, register_model\n\n"
         "@register_model('resnet18')\nclass Mine(Classifier):\n"
         "    def __init__(self, num_classes=10, dropout=0.0) -> None:\n"
         "        super().__init__()\n",
         "broken:Mine: architecture 'resnet18' is registered twice; register it under another"),
        ("from toolkit.models import register_model\n\n"
         "@register_model('plain')\nclass Mine:\n    pass\n",
         "decorates <class 'broken.Mine'>, which is no subclass of toolkit.models.Classifier"),
        ("from toolkit.models import Classifier, register_model\n\n"
         "@register_model('mine')\nclass Mine(Classifier):\n"
         "    def __init__(self, num_classes: int = 10) -> None:\n        super().__init__()\n",
         "broken:Mine takes no dropout: rtk builds every model with the dataset's classes"),
        ("from toolkit.models import Classifier, register_model\n\n"
         "@register_model('mine', act=print)\nclass Mine(Classifier):\n"
         "    def __init__(self, num_classes=10, dropout=0.0, act=None) -> None:\n"
         "        super().__init__()\n",
         "broken:Mine: @register_model arguments must be numbers, text, lists or dicts"),
    ],
)  # fmt: skip
def test_a_broken_module_is_one_line(tmp_path: Path, source: str, said: str):
    path = tmp_path / "broken.py"
    path.write_text(source)
    result = _rtk("models", models=str(path), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert said.format(path=path) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
