"""Peak memory and time of ``privbench validate --data`` and ``privbench run`` on a large user CSV.

Issue 22, item 8: a 50 MB CSV must run in at most 1.5 GB of peak memory. The CSV is generated
here (never committed): ``--rows`` patients in 4 hospitals, 8 numeric and 3 categorical
columns and a binary outcome (about 72 bytes a row, so 700,000 rows is about 50 MB). Each
command runs in a fresh process; its peak resident memory is the ``ru_maxrss`` of that process
tree (``getrusage(RUSAGE_CHILDREN)`` of a wrapper that runs only it).

    .venv/bin/python benchmarks/bench_csv_memory.py            # 50 MB
    .venv/bin/python benchmarks/bench_csv_memory.py --rows 50000

Results and where the memory goes: docs/bench-csv-memory.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LIMIT_GB = 1.5

_WRAPPER = r"""
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
p = subprocess.run(sys.argv[1:], capture_output=True, text=True)
secs = time.perf_counter() - t0
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"rc": p.returncode, "seconds": secs, "peak_gb": peak_kb / 1024 ** 2, "err": p.stderr[-800:]}))
"""


def write_csv(path: Path, rows: int, seed: int = 0) -> None:
    """A synthetic cohort, written in chunks (the generator itself stays small)."""
    rng = np.random.default_rng(seed)
    sites = np.array(["north", "south", "east", "west"])
    cats = {"sex": np.array(["f", "m"]), "smoker": np.array(["never", "former", "current"]),
            "ward": np.array(["cardio", "icu", "general", "surgery"])}
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("hospital,age,bp,chol,bmi,hr,glucose,creat,hb," + ",".join(cats) + ",outcome\n")
        chunk = 100_000
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            num = np.column_stack([rng.integers(20, 90, n), rng.normal(125, 15, n), rng.normal(210, 40, n), rng.normal(27, 5, n),
                                   rng.normal(75, 12, n), rng.normal(100, 25, n), rng.normal(1.0, 0.3, n), rng.normal(13.5, 1.5, n)])
            risk = (num[:, 0] - 55) / 20 + (num[:, 1] - 125) / 30 + rng.normal(0, 1, n)
            cols = [sites[rng.integers(0, 4, n)]] + [np.char.mod("%.4g", num[:, j]) for j in range(num.shape[1])]
            cols += [v[rng.integers(0, len(v), n)] for v in cats.values()]
            cols.append(np.where(risk > 0, "sick", "healthy"))
            lines = np.char.add(cols[0], "")
            for c in cols[1:]:
                lines = np.char.add(np.char.add(lines, ","), c)
            fh.write("\n".join(lines.tolist()) + "\n")


def suite_yaml(csv: Path) -> str:
    return f"""suite: csv_memory
base:
  data: {{name: csv, path: {csv}, partition: natural, site_column: hospital, label_column: outcome,
          categorical_columns: [sex, smoker, ward], positive_labels: [sick]}}
  model: {{name: logreg}}
  train: {{rounds: 1, local_epochs: 1, batch_size: 256, lr: 0.05}}
  attacks: [{{name: loss_threshold}}]
seeds: [0]
"""


def measure(argv: list[str], env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", _WRAPPER, *argv], capture_output=True, text=True, env=env, cwd=REPO, check=True)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=700_000)
    ap.add_argument("--label", default="", help="a name for this measurement (e.g. before / after)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="privbench-csvmem-") as tmp:
        tmp = Path(tmp)
        csv = tmp / "cohort.csv"
        t0 = time.perf_counter()
        write_csv(csv, args.rows)
        mb = csv.stat().st_size / 1e6
        suite = tmp / "suite.yaml"
        suite.write_text(suite_yaml(csv))
        env = {**os.environ, "PRIVBENCH_STATE_DIR": str(tmp / "state")}
        env.pop("MLFLOW_TRACKING_URI", None)
        print(f"csv: {args.rows:,} rows, {mb:.1f} MB (written in {time.perf_counter() - t0:.1f} s)")
        base = [sys.executable, "-m", "bench"]
        rows = [("validate --data", measure([*base, "validate", str(suite), "--data"], env)),
                ("run", measure([*base, "run", str(suite), "-q", "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}"], env))]
        # the baseline measured in the same run: the interpreter with privbench's imports, no data
        idle = measure([sys.executable, "-c", "import bench.cli, bench.runner, mlflow, torch, pandas"], env)
        print(f"{'command':<18} {'rc':>3} {'peak GB':>8} {'seconds':>8}  (label {args.label or '-'})")
        print(f"{'imports only':<18} {idle['rc']:>3} {idle['peak_gb']:>8.2f} {idle['seconds']:>8.1f}")
        for name, r in rows:
            flag = "" if r["peak_gb"] <= LIMIT_GB else f"  > {LIMIT_GB} GB"
            print(f"{name:<18} {r['rc']:>3} {r['peak_gb']:>8.2f} {r['seconds']:>8.1f}  ratio to imports {r['peak_gb'] / idle['peak_gb']:.1f}x{flag}")
            if r["rc"] != 0:
                print(f"  stderr: {r['err']}")


if __name__ == "__main__":
    main()
