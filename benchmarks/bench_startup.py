"""Start-up cost of privbench's commands: wall and CPU time of whole processes, measured in one run.

Commands (each a fresh process, as a user types it; repeated ``--repeat`` times, interleaved,
median shown):

  * floors: ``python -c pass`` and ``python -c "import torch"`` (no privbench code);
  * ``privbench --version``, ``privbench list``, ``privbench list lira``, ``privbench schema``,
    ``privbench validate experiments/quick.yaml`` (issue 26 item 3: these load no torch or scipy);
  * ``privbench run`` of one cell (UCI heart disease, 4 hospitals, MLP 32, 3 rounds; the cell of
    ``bench_flower.py`` (a)) into a **new** SQLite store and again into the now **existing** one
    (``--no-resume``);
  * per command, the heavy modules it imported (its ``sys.modules`` at exit): torch, scipy,
    mlflow, opacus, ray, matplotlib, sklearn, pandas, bench.report.

CPU time is user + system of the child process tree (``resource.RUSAGE_CHILDREN``), so it
counts every core. Each command's wall time is also printed as a ratio to the two floors of the
same run (``÷ pass``, ``÷ torch``), so numbers from a loaded machine still compare. There is no bare-PyTorch loop here: ``bench_flower.py`` measures against
Flower, and the ``import torch`` floor is the part no Python FedAvg loop can avoid.

Usage (from the repository root)::

    PRIVBENCH_DATA_DIR=/path/to/uci-heart-disease python benchmarks/bench_startup.py \\
        [--repeat 3] [--json out.json] [--compare before.json] [--before-tree DIR] [--no-run]

``--before-tree DIR`` measures a second checkout (e.g. an older commit, ``git worktree add DIR
<commit>``) in the same run, each command alternating between the two trees, and prints the
ratio this tree / DIR (``git archive <commit> | tar -x -C DIR`` makes one without touching the
working tree); ``--compare`` prints a saved run (``--json`` of an earlier tree) beside this one;
``--no-run`` leaves out the two ``privbench run`` commands (no data needed).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "scipy", "mlflow", "opacus", "ray", "matplotlib", "sklearn", "pandas", "bench.report")


def one_cell_suite(folder: Path) -> Path:
    raw = {
        "suite": "startup",
        "base": {
            "data": {"name": "heart_disease", "partition": "natural"},
            "model": {"name": "mlp", "hidden": [32]},
            "train": {"rounds": 3, "local_epochs": 1, "batch_size": 32, "optimizer": "sgd", "lr": 0.1},
            "attacks": [],
        },
        "seeds": [0],
    }
    path = folder / "startup.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def timed(cmd: list[str], env: dict, cwd: Path = REPO) -> tuple[float, float]:
    """(wall s, CPU s of the process tree) of one command; fails loudly."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


_WATCH = ("import atexit, os, sys\n"
          "_pid = os.getpid()\n"
          "atexit.register(lambda: os.getpid() == _pid and sys.stderr.write('HEAVY=' + ','.join(sorted(sys.modules)) + '\\n'))\n")


def heavy_imports(cmd: list[str], env: dict, cwd: Path = REPO) -> list[str]:
    """The HEAVY modules in the command's ``sys.modules`` at exit (the main process; a thread's or
    a child's imports do not hide it, as they can in ``-X importtime``'s interleaved lines)."""
    if cmd[1:3] == ["-m", "bench"]:
        code = _WATCH + f"import runpy\nsys.argv = ['privbench', *{cmd[3:]!r}]\nrunpy.run_module('bench', run_name='__main__')\n"
    else:  # python -c CODE
        code = _WATCH + cmd[2]
    proc = subprocess.run([cmd[0], "-c", code], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    names: set[str] = set()
    for line in proc.stderr.splitlines():
        if line.startswith("HEAVY="):
            names = set(line[len("HEAVY="):].split(","))
    return [h for h in HEAVY if any(n == h or n.startswith(h + ".") for n in names)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3, help="runs per command (median shown)")
    ap.add_argument("--json", metavar="PATH", help="write the measurements here")
    ap.add_argument("--compare", metavar="PATH", help="a --json file of an earlier run, printed side by side")
    ap.add_argument("--before-tree", metavar="DIR", help="another checkout, measured in the same run (alternating)")
    ap.add_argument("--no-run", action="store_true", help="leave out `privbench run` (start-up of the light commands only)")
    args = ap.parse_args()
    if not args.no_run and not os.environ.get("PRIVBENCH_DATA_DIR"):
        raise SystemExit("set PRIVBENCH_DATA_DIR to the folder of UCI's processed.*.data files")
    tmp = Path(tempfile.mkdtemp(prefix="bench_startup_"))
    suite = one_cell_suite(tmp)
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    py, pb = sys.executable, [sys.executable, "-m", "bench"]
    cmds = {
        "python -c pass": [py, "-c", "pass"],
        "python -c 'import torch'": [py, "-c", "import torch"],
        "privbench --version": pb + ["--version"],
        "privbench list": pb + ["list"],
        "privbench list lira": pb + ["list", "lira"],
        "privbench schema": pb + ["schema"],
        "privbench validate experiments/quick.yaml": pb + ["validate", "experiments/quick.yaml"],
        "privbench run (1 cell, 3 rounds), new store": None,  # a fresh store per repetition, below
        "privbench run (1 cell, 3 rounds), existing store": None,
    }
    if args.no_run:
        cmds = {k: v for k, v in cmds.items() if not k.startswith("privbench run")}
    trees = {"this tree": REPO}
    if args.before_tree:
        trees["before tree"] = Path(args.before_tree).resolve()
    samples = {t: {k: [] for k in cmds} for t in trees}
    print(f"CPUs {os.cpu_count()}; load at start {os.getloadavg()}; work dir {tmp}; trees {trees}", flush=True)
    for rep in range(args.repeat):
        for name, cmd in cmds.items():
            for label, tree in trees.items():  # alternate: both trees see the same load
                db = tmp / f"{label.split()[0]}{rep}.db"
                if name.endswith("new store"):
                    cmd = pb + ["run", "-q", str(suite), "--tracking-uri", f"sqlite:///{db}"]
                elif name.endswith("existing store"):  # the store the previous line created
                    cmd = pb + ["run", "-q", str(suite), "--tracking-uri", f"sqlite:///{db}", "--no-resume"]
                samples[label][name].append(timed(cmd, env, tree))
    imports = {t: {} for t in trees}
    for label, tree in trees.items():
        for name, cmd in cmds.items():
            if name.startswith("privbench run"):
                cmd = pb + ["run", "-q", str(suite), "--tracking-uri", f"sqlite:///{tmp / (label.split()[0] + 'imports.db')}", "--no-resume"]
            imports[label][name] = heavy_imports(cmd, env, tree)
    load = os.getloadavg()

    def summary(label):
        return {k: {"wall_s": statistics.median(w for w, _ in v), "cpu_s": statistics.median(c for _, c in v),
                    "wall_all": [round(w, 2) for w, _ in v], "cpu_all": [round(c, 2) for _, c in v],
                    "heavy_imports": imports[label][k]}
                for k, v in samples[label].items()}

    result = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_end": load, "repeat": args.repeat,
              "commands": summary("this tree")}
    if args.before_tree:
        result["before_tree"] = {"path": str(trees["before tree"]), "commands": summary("before tree")}
    before = json.loads(Path(args.compare).read_text()) if args.compare else None
    print(f"load at end {load}; median of {args.repeat} runs each; CPU = user + system")
    head = f"{'command':50s} {'wall s':>7s} {'CPU s':>6s} {'÷ pass':>6s} {'÷ torch':>7s}"
    if args.before_tree:
        head += f" | {'before wall':>11s} {'before CPU':>10s} {'wall ratio':>10s} {'CPU ratio':>9s}"
    if before:
        head += f" | {'saved wall':>10s} {'saved CPU':>9s}"
    print(head + " | heavy modules imported (this tree; before tree)")
    floor = result["commands"]["python -c pass"]["wall_s"]
    torch_floor = result["commands"]["python -c 'import torch'"]["wall_s"]
    for k, v in result["commands"].items():
        line = f"{k:50s} {v['wall_s']:7.2f} {v['cpu_s']:6.2f} {v['wall_s'] / floor:6.1f} {v['wall_s'] / torch_floor:7.2f}"
        heavy = ", ".join(v["heavy_imports"]) or "-"
        if args.before_tree:
            b = result["before_tree"]["commands"][k]
            line += f" | {b['wall_s']:11.2f} {b['cpu_s']:10.2f} {v['wall_s'] / b['wall_s']:10.2f} {v['cpu_s'] / max(b['cpu_s'], 1e-9):9.2f}"
            heavy += "; " + (", ".join(b["heavy_imports"]) or "-")
        if before and k in before["commands"]:
            b = before["commands"][k]
            line += f" | {b['wall_s']:10.2f} {b['cpu_s']:9.2f}"
        print(line + " | " + heavy)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
