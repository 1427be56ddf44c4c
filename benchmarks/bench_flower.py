"""privbench vs. Flower's simulation engine on the same FedAvg work, measured in one run.

Work: FedAvg on UCI heart disease (4 real hospitals), MLP with 32 hidden units, SGD,
batch 32, one local epoch, no defense, no attack. Both tools get the *same* arrays from
privbench's loader (its one-hot encoding makes the input 28 wide, not 13), the same
initial weights and the same batch order per hospital and round, so final accuracies must
agree; only the engine differs.

  (a) one cell of 3 and of 20 rounds: whole-process wall time of each tool;
  (b) a grid of 20 cells (5 learning rates x 4 seeds, 3 rounds): Flower as a user runs it,
      one simulation process per cell; privbench as one ``privbench run SUITE --workers 2``;
  (c) the whole quick suite (experiments/quick.yaml): wall time and peak memory.

Usage (from the repository root)::

    PRIVBENCH_DATA_DIR=/path/to/uci-heart-disease python benchmarks/bench_flower.py \\
        --flower-python /path/to/venv-flower/bin/python [--flower-grid-cells 20]

``--flower-grid-cells K < 20`` runs only K of Flower's 20 grid simulations and scales
their mean to 20 (printed as an estimate); privbench always runs all 20.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
SETTINGS = (0.02, 0.05, 0.1, 0.2, 0.3)  # learning rates: the 5 settings of the grid
SEEDS = (0, 1, 2, 3)


def base(rounds: int, lr: float = 0.1) -> dict:
    return {
        "data": {"name": "heart_disease", "partition": "natural"},
        "model": {"name": "mlp", "hidden": [32]},
        "train": {"rounds": rounds, "local_epochs": 1, "batch_size": 32, "optimizer": "sgd", "lr": lr},
        "attacks": [],
    }


def suite_file(folder: Path, name: str, rounds: int, lrs, seeds) -> Path:
    raw = {"suite": name, "base": base(rounds), "grid": {"train.lr": list(lrs)}, "seeds": list(seeds)}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def export_cell(cfg, path: Path) -> None:
    """The arrays privbench trains on, for the Flower side."""
    import torch

    from bench.data import build_federation
    from bench.models import build_model, flatten
    from bench.seeding import Seeds

    seeds = Seeds(cfg.seed)
    fed, _ = build_federation(cfg.data, seeds)
    init = flatten(build_model(fed.info, cfg.model, seeds.torch("init")))
    arrays = {"num_sites": len(fed.sites), "rounds": cfg.train.rounds, "lr": cfg.train.lr, "batch_size": cfg.train.batch_size,
              "init": init.numpy(), "x_test": fed.test.x.numpy(), "y_test": fed.test.y.numpy()}
    for i, site in enumerate(fed.sites):
        arrays[f"x_{i}"], arrays[f"y_{i}"] = site.train.x.numpy(), site.train.y.numpy()
        for r in range(1, cfg.train.rounds + 1):  # PlainTrainer's shuffle for (site, round)
            arrays[f"order_{i}_{r}"] = torch.randperm(len(site.train), generator=seeds.torch("train", site.name, r)).numpy()
    np.savez(path, **arrays)


def _tree_rss_kb(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants (Linux /proc), in KiB."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as fh:
                total += next(int(l.split()[1]) for l in fh if l.startswith("VmRSS:"))
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as fh:
                    stack += [int(c) for c in fh.read().split()]
        except (OSError, StopIteration):
            continue
    return total


LAST_CPU = [0.0]  # CPU seconds (user + system) of the last measured command and the children it waited for


def _children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measure(cmd: list[str], env=None) -> tuple[float, float, str]:
    """(wall seconds, peak MiB of the whole process tree, stdout) of one command; its CPU seconds
    (user + system, the process and the descendants it reaped) are left in ``LAST_CPU[0]``."""
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak = [0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss_kb(proc.pid))
            time.sleep(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - t0
    LAST_CPU[0] = _children_cpu() - cpu0
    th.join()
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{out[-2000:]}")
    return wall, peak[0] / 1024, out


def privbench_accuracy(uri: str, suite: str) -> dict[str, float]:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name(suite)
    return {r.data.tags["run_key"]: r.data.metrics["utility/test_accuracy"] for r in c.search_runs([exp.experiment_id], "tags.role = 'cell'")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flower-python", required=True, help="python of a venv with flwr[simulation] and torch")
    ap.add_argument("--flower-grid-cells", type=int, default=20, help="Flower grid cells actually run (the rest extrapolated)")
    ap.add_argument("--skip-quick", action="store_true", help="skip the quick-suite measurement")
    ap.add_argument("--cell-only", action="store_true", help="only (a): one cell of 3 and 20 rounds, wall and CPU, vs Flower and a bare loop")
    args = ap.parse_args()
    if not os.environ.get("PRIVBENCH_DATA_DIR"):
        raise SystemExit("set PRIVBENCH_DATA_DIR to the folder of UCI's processed.*.data files")
    from bench.suite import load_suite

    pb = [sys.executable, "-m", "bench", "run", "-q"]
    fl_cell = str(REPO / "benchmarks" / "flower_cell.py")
    tmp = Path(tempfile.mkdtemp(prefix="bench_flower_"))
    print(f"work dir {tmp}; CPUs {os.cpu_count()}; load {os.getloadavg()[0]:.1f}")
    results: dict = {}

    def flower(cfg, tag: str, script: str = fl_cell) -> tuple[float, float, float]:
        npz, res = tmp / f"{tag}.npz", tmp / f"{tag}.json"
        export_cell(cfg, npz)
        wall, mem, _ = measure([args.flower_python, script, str(npz), str(res)])
        return wall, mem, json.loads(res.read_text())["accuracy"]

    # (a) one cell, 3 and 20 rounds
    for rounds in (3, 20):
        path = suite_file(tmp, f"one{rounds}", rounds, [0.1], [0])
        cfg = load_suite(str(path)).cells[0].config
        uri = f"sqlite:///{tmp / f'one{rounds}.db'}"
        pw, pm, _ = measure(pb + [str(path), "--tracking-uri", uri])
        pc = LAST_CPU[0]
        pacc = privbench_accuracy(uri, f"one{rounds}")[cfg.run_key]
        # the same cell again into the now existing store (the everyday case: results/mlflow.db exists)
        pw2, _, _ = measure(pb + [str(path), "--tracking-uri", uri, "--no-resume"])
        pc2 = LAST_CPU[0]
        # the same, with the first cell run in-process after the store is open (bench/early.py off)
        pw3, _, _ = measure(pb + [str(path), "--tracking-uri", uri, "--no-resume"], env={**os.environ, "PRIVBENCH_EARLY_CELL": "0"})
        pc3 = LAST_CPU[0]
        fw, fm, facc = flower(cfg, f"one{rounds}")
        fc = LAST_CPU[0]
        bw, _, bacc = flower(cfg, f"bare{rounds}", str(REPO / "benchmarks" / "bare_cell.py"))
        bc = LAST_CPU[0]
        results[f"a{rounds}"] = dict(privbench_s=pw, privbench_existing_store_s=pw2, flower_s=fw, bare_s=bw, ratio=pw / fw,
                                     ratio_existing_store=pw2 / fw, privbench_cpu_s=pc, privbench_existing_store_cpu_s=pc2,
                                     flower_cpu_s=fc, bare_cpu_s=bc, cpu_ratio=pc / fc, cpu_ratio_existing_store=pc2 / fc,
                                     bare_ratio=pw2 / bw, no_early_s=pw3, no_early_cpu_s=pc3, no_early_bare_ratio=pw3 / bw,
                                     no_early_cpu_ratio=pc3 / fc, privbench_acc=pacc, flower_acc=facc, bare_acc=bacc, privbench_mib=pm, flower_mib=fm)
        print(f"(a) 1 cell x {rounds:2d} rounds: privbench {pw:6.1f} s new store / {pw2:.1f} s existing store ({pm:.0f} MiB)  "
              f"Flower {fw:6.1f} s ({fm:.0f} MiB)  bare PyTorch {bw:.1f} s\n"
              f"    wall: privbench/Flower {pw / fw:.3f} / {pw2 / fw:.3f} (target <= 0.5), privbench/bare {pw / bw:.2f} / {pw2 / bw:.2f} (target <= 1.5)\n"
              f"    CPU:  privbench {pc:.1f} / {pc2:.1f} s, Flower {fc:.1f} s, bare {bc:.1f} s: privbench/Flower {pc / fc:.3f} / {pc2 / fc:.3f} "
              f"(target <= 1.0)\n    first cell in-process after the store opens (PRIVBENCH_EARLY_CELL=0, existing store): "
              f"{pw3:.1f} s wall, {pc3:.1f} s CPU: /bare {pw3 / bw:.2f}, CPU/Flower {pc3 / fc:.3f}\n"
              f"    accuracy {pacc:.3f} vs Flower {facc:.3f} vs bare {bacc:.3f}")

    if args.cell_only:
        print(json.dumps(results, indent=1))
        return 0

    # (b) the grid: 20 cells
    path = suite_file(tmp, "grid", 3, SETTINGS, SEEDS)
    cells = load_suite(str(path)).cells
    uri = f"sqlite:///{tmp / 'grid.db'}"
    pw, pm, _ = measure(pb + [str(path), "--tracking-uri", uri, "--workers", "2"])
    pacc = privbench_accuracy(uri, "grid")
    k = max(1, min(args.flower_grid_cells, len(cells)))
    pick = [cells[int(i)] for i in np.linspace(0, len(cells) - 1, k).round()]
    fws, diffs = [], []
    for c in pick:
        fw, _, facc = flower(c.config, f"grid{c.index}")
        fws.append(fw)
        diffs.append(abs(facc - pacc[c.run_key]))
    fgrid = float(np.sum(fws)) * (len(cells) / k)
    est = "" if k == len(cells) else f" (estimate: {k} of {len(cells)} simulations run, mean x {len(cells)})"
    results["b"] = dict(privbench_s=pw, privbench_mib=pm, flower_s=fgrid, flower_cells_run=k, speedup=fgrid / pw, max_acc_diff=max(diffs))
    print(f"(b) grid of {len(cells)} cells x 3 rounds: privbench --workers 2 {pw:6.1f} s ({pm:.0f} MiB)  "
          f"Flower {fgrid:6.1f} s{est}  speed-up {fgrid / pw:.1f}x (target >= 20x)  max |accuracy difference| {max(diffs):.4f} (limit 0.02)")

    # (c) the quick suite
    if not args.skip_quick:
        for w in ("1", "2"):
            uri = f"sqlite:///{tmp / f'quick{w}.db'}"
            qw, qm, _ = measure(pb + [str(REPO / "experiments" / "quick.yaml"), "--tracking-uri", uri, "--workers", w])
            results[f"quick_w{w}"] = dict(seconds=qw, peak_mib=qm)
            print(f"(c) quick suite, --workers {w}: {qw:6.1f} s, peak memory {qm:.0f} MiB (whole process tree)")
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
