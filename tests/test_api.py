"""The Python API (issue 25 item 4): ``privbench.run`` / ``privbench.results``, and the guide
``docs/own-model.md`` whose commands run here as written (in a fresh folder, in order)."""

from __future__ import annotations

import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import privbench
from bench.types import ConfigError

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "own-model.md"


def guide_blocks() -> list[tuple[str, str]]:
    """``(language, text)`` of every fenced block of the guide, in order."""
    return re.findall(r"```(\w+)\n(.*?)```", GUIDE.read_text(encoding="utf-8"), re.S)


def write_guide_files(folder: Path) -> None:
    for _, text in guide_blocks():
        m = re.match(r"# file: (\S+)\n", text)
        if m:
            (folder / m.group(1)).write_text(text)


def test_the_guide_declares_its_files_and_commands():
    langs = [lang for lang, _ in guide_blocks()]
    files = [re.match(r"# file: (\S+)", t).group(1) for _, t in guide_blocks() if t.startswith("# file:")]
    assert files == ["mymodels.py", "my-suite.yaml"]
    assert "bash" in langs and "python" in langs


def test_the_guide_suite_validates_with_the_users_model(tmp_path, monkeypatch):
    from bench.suite import load_suite

    write_guide_files(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    suite = load_suite(str(tmp_path / "my-suite.yaml"))
    assert [c.config.model.name for c in suite.cells] == ["mymodels:ChestNet"] * 2
    assert dict(suite.cells[0].config.model.params) == {"width": 8, "blocks": 1}
    assert [d.name for d in suite.cells[1].config.defenses] == ["dp_sgd"]


@pytest.mark.slow
def test_the_guide_runs_from_install_to_dataframe(tmp_path):
    """Every bash line (``pip install`` aside: this checkout is the package) and the Python block."""
    write_guide_files(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    ran = []
    for lang, text in guide_blocks():
        if lang == "bash":
            for line in text.strip().splitlines():
                cmd = line.split("#")[0].strip()
                if not cmd or cmd.startswith("pip install"):
                    continue
                argv = shlex.split(cmd)
                assert argv[0] == "privbench", cmd
                out = subprocess.run([sys.executable, "-m", "bench", *argv[1:]], cwd=tmp_path, env=env, capture_output=True,
                                     text=True, timeout=900)
                assert out.returncode == 0, f"{cmd}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
                ran.append((cmd, out.stdout))
        elif lang == "python" and not text.startswith("# file:"):
            out = subprocess.run([sys.executable, "-c", text], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
            assert out.returncode == 0, f"{text}\n{out.stderr[-3000:]}"
            ran.append(("python", out.stdout))
    assert [c for c, _ in ran] == ["privbench list mymodels:ChestNet", "privbench validate my-suite.yaml",
                                   "privbench run my-suite.yaml --tracking-uri sqlite:///mlflow.db", "python"]
    assert "width" in ran[0][1] and "2 cells" in ran[1][1] and "dp_sgd" in ran[2][1]


SUITE = {
    "suite": "api-test",
    "base": {"data": {"name": "breast_cancer", "partition": "iid", "num_sites": 3}, "model": {"name": "logreg"},
             "train": {"rounds": 2, "local_epochs": 1, "batch_size": 16, "lr": 0.1}, "attacks": [{"name": "loss_threshold"}]},
    "variants": [{"defenses": []}, {"defenses": [{"name": "dp_sgd", "noise_multiplier": 1.0, "max_grad_norm": 1.0}]}],
    "seeds": [0],
}


def test_run_and_results_one_row_per_cell_with_intervals(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    df = privbench.run(SUITE, tracking_uri=uri)
    assert len(df) == 2 and set(privbench.HEADLINE_COLUMNS) <= set(df.columns)
    by = {row.defenses: row for row in df.itertuples()}
    assert set(by) == {"none", "dp_sgd"}
    dp, plain = by["dp_sgd"], by["none"]
    assert dp.epsilon > 0 and dp.delta > 0 and dp.privacy_unit == "record" and math.isnan(plain.epsilon)
    for row in (dp, plain):
        assert 0 <= row.test_accuracy <= 1 and row.membership_attack == "loss_threshold"
        assert row.membership_low <= row.membership <= row.membership_high
    # the same numbers as the store holds, and again by the suite's file or mapping
    from mlflow.tracking import MlflowClient

    logged = MlflowClient(uri).get_run(dp.run_id).data.metrics
    assert logged["privacy/epsilon"] == dp.epsilon and logged["utility/test_accuracy"] == dp.test_accuracy
    assert privbench.results(SUITE, tracking_uri=uri).equals(df)
    # resumed: nothing runs again, the same rows come back
    assert privbench.run(SUITE, tracking_uri=uri)[["run_key", "run_id"]].equals(df[["run_key", "run_id"]])


def test_bad_suite_raises_config_error_and_runs_nothing(tmp_path):
    bad = {**SUITE, "base": {**SUITE["base"], "train": {"rounds": 0}}}
    with pytest.raises(ConfigError, match="train.rounds"):
        privbench.run(bad, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert not (tmp_path / "mlflow.db").exists()
    with pytest.raises(ConfigError, match="no such suite|is empty|does not exist|no store"):
        privbench.results("nope", tracking_uri=f"sqlite:///{tmp_path / 'other.db'}")


def test_importing_privbench_loads_no_heavy_library():
    code = "import privbench, sys; print(sorted({'torch', 'mlflow', 'pandas', 'scipy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
