"""Memory of ``privbench run --workers N``: the whole process tree's RSS and PSS, sampled (issue 26 item 4).

Runs a suite (default: a reduced copy of ``experiments/membership.yaml``, written to a temporary
file) once per worker count (default ``--workers 1`` then ``--workers 2``), each into a fresh
temporary SQLite store, and samples every process of the ``privbench`` process tree (the CLI,
the fork server, its workers, the early cell's child, multiprocessing's resource tracker) every
``--interval`` seconds from ``/proc``:

  * **RSS** summed over the tree double-counts the pages forked processes share copy-on-write
    (the fork server's imported torch, numpy and the pipeline appear once per worker);
  * **PSS** (``/proc/PID/smaps_rollup``) divides each shared page among the processes that map
    it, so summed PSS is what the tree really occupies;
  * **USS** (private clean + private dirty) of a process is what only it holds: what a worker
    costs on top of what it shares.

Printed per run: wall time, peak summed RSS, peak summed PSS, the largest process's peak RSS
and the largest cell process's peak USS (a worker, or the early first cell's child), and each as a ratio to the first run (the ``--workers 1``
baseline of the same invocation). Memory numbers are robust to machine load; wall times are not
(the 2-core machine is shared: read wall-time ratios only from runs made under similar load,
printed from ``/proc/loadavg`` before and after each run).

Every run's cell metrics (latest values, timings left out) are read back from its store and
compared: the line ``cell metrics: identical in every run`` says that neither the worker count
nor the tree changed a number.

Usage (from the repository root)::

    PRIVBENCH_DATA_DIR=/path/to/uci-heart-disease python benchmarks/bench_workers_memory.py \\
        [--workers 1 2] [--seeds 0] [--only TEXT] [--rounds N] [--full] [--before-tree DIR] [--json out.json]

``--before-tree DIR`` runs a second checkout too (``git archive <commit> | tar -x -C DIR`` makes
one without touching the working tree), alternating with this one for each worker count, and
prints this tree ÷ DIR.

``--full`` runs ``experiments/membership.yaml`` unchanged (60 cells: long); the default keeps
seed 0 only and every variant (20 cells), and ``--rounds`` shortens training (``--set
train.rounds=N``) where a quicker check will do. PSS needs ``smaps_rollup`` (Linux >= 4.14).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "experiments" / "membership.yaml"
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


# --------------------------------------------------------------------------- /proc


def _ppid_map() -> dict[int, int]:
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:  # gone between listdir and open
            continue
        # the command name (field 2) may contain spaces and parentheses: split after the last ')'
        fields = stat[stat.rfind(")") + 2:].split()
        out[int(name)] = int(fields[1])
    return out


def tree(root: int) -> list[int]:
    """``root`` and all its descendants (by parent pid, from /proc)."""
    parents = _ppid_map()
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in parents:
            out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def memory_kb(pid: int) -> dict[str, int] | None:
    """``{"rss", "pss", "uss"}`` of one process in kB, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            text = f.read()
    except OSError:
        return None
    vals: dict[str, int] = {}
    for line in text.splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            vals[key.strip()] = int(parts[0])
    if "Rss" not in vals:  # a zombie has an empty rollup
        return None
    return {"rss": vals["Rss"], "pss": vals["Pss"], "uss": vals.get("Private_Clean", 0) + vals.get("Private_Dirty", 0)}


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


@dataclass
class Peaks:
    """Peaks over one run's samples (kB)."""

    samples: int = 0
    sum_rss: int = 0
    sum_pss: int = 0
    max_rss: int = 0  # the largest single process
    max_rss_cmd: str = ""
    max_worker_uss: int = 0  # the largest cell process (a worker, the early cell's child) of its own
    max_procs: int = 0
    per_role: dict = field(default_factory=dict)  # role -> peak RSS / PSS / USS of one process in that role

    def add(self, root: int, mem: dict[int, dict[str, int]], roles: dict[int, str]) -> None:
        self.samples += 1
        self.sum_rss = max(self.sum_rss, sum(m["rss"] for m in mem.values()))
        self.sum_pss = max(self.sum_pss, sum(m["pss"] for m in mem.values()))
        self.max_procs = max(self.max_procs, len(mem))
        for pid, m in mem.items():
            if m["rss"] > self.max_rss:
                self.max_rss, self.max_rss_cmd = m["rss"], roles.get(pid, "?")
            if roles.get(pid) in CELL_ROLES:
                self.max_worker_uss = max(self.max_worker_uss, m["uss"])
            role = self.per_role.setdefault(roles.get(pid, "?"), {"rss": 0, "pss": 0, "uss": 0})
            for k in ("rss", "pss", "uss"):
                role[k] = max(role[k], m[k])


CELL_ROLES = ("worker", "early cell / child of cli")


def _role(pid: int, root: int, parents: dict[int, int]) -> str:
    if pid == root:
        return "cli"
    cmd = cmdline(pid)
    if "forkserver" in cmd:  # the server and the workers it forks share its command line
        return "worker" if "forkserver" in cmdline(parents.get(pid, 0)) else "fork server"
    if "resource_tracker" in cmd:
        return "resource tracker"
    if parents.get(pid) == root:
        return "early cell / child of cli"
    return "worker"


def sample(proc: subprocess.Popen, interval: float, peaks: Peaks) -> None:
    roles: dict[int, str] = {}
    while proc.poll() is None:
        pids = tree(proc.pid)
        parents = _ppid_map() if any(p not in roles for p in pids) else {}
        for p in pids:
            if p not in roles:
                roles[p] = _role(p, proc.pid, parents)
        mem = {p: m for p in pids if (m := memory_kb(p)) is not None}
        if mem:
            peaks.add(proc.pid, mem, roles)
        time.sleep(interval)


# --------------------------------------------------------------------------- runs


def write_suite(folder: Path, full: bool, seeds: list[int]) -> Path:
    raw = yaml.safe_load(SUITE.read_text())
    if not full:
        raw["seeds"] = seeds
    raw["suite"] = "membership_memory"
    path = folder / "membership_memory.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


CLI = "import sys; from bench.cli import main; sys.exit(main(sys.argv[1:]))"


def run_once(suite: Path, workers: int, folder: Path, args, tree: Path = REPO) -> dict:
    store = folder / f"w{workers}-{time.monotonic_ns()}.db"
    # the CLI of ``tree`` (this checkout, or --before-tree), the same way for both
    cmd = [sys.executable, "-c", CLI, "run", str(suite), "--workers", str(workers), "-q", "--tracking-uri", f"sqlite:///{store}"]
    if args.only:
        cmd += ["--only", args.only]
    if args.rounds:
        cmd += ["--set", f"train.rounds={args.rounds}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    load_before = loadavg()
    peaks = Peaks()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = threading.Thread(target=sample, args=(proc, args.interval, peaks), daemon=True)
    sampler.start()
    output, _ = proc.communicate()
    wall = time.perf_counter() - t0
    sampler.join()
    if proc.returncode != 0:
        sys.stderr.write(output[-4000:])
        raise SystemExit(f"privbench run --workers {workers} ({tree}) exited {proc.returncode}")
    return {"tree": "before" if tree != REPO else "this", "workers": workers, "wall_s": wall, "load_before": load_before,
            "load_after": loadavg(), **asdict(peaks), "metrics": cell_metrics(store)}


def cell_metrics(store: Path) -> dict[str, dict[str, float]]:
    """run_key -> {metric: latest value} of each cell run in an MLflow SQLite store, timings left out."""
    con = sqlite3.connect(store)
    try:
        rows = con.execute(
            "SELECT k.value, m.key, m.value FROM latest_metrics m "
            "JOIN tags k ON k.run_uuid = m.run_uuid AND k.key = 'run_key' "
            "JOIN tags r ON r.run_uuid = m.run_uuid AND r.key = 'role' AND r.value = 'cell'").fetchall()
    finally:
        con.close()
    out: dict[str, dict[str, float]] = {}
    for key, metric, value in rows:
        if "seconds" not in metric:  # wall-clock timings differ between any two runs
            out.setdefault(key, {})[metric] = value
    return out


def mb(kb: int) -> str:
    return f"{kb / 1024:7.0f}"


def table(results: list[dict]) -> None:
    print(f"{'tree':>6} {'workers':>7} | {'wall s':>7} {'÷w1':>5} | {'sum RSS MB':>10} {'÷':>5} | "
          f"{'sum PSS MB':>10} {'÷':>5} | {'max proc RSS MB':>15} {'÷':>5} | {'max worker USS MB':>17} | load before -> after")
    for r in results:
        base = next(b for b in results if b["tree"] == r["tree"])  # the tree's first run: its baseline
        print(f"{r['tree']:>6} {r['workers']:>7} | {r['wall_s']:7.1f} {r['wall_s'] / base['wall_s']:5.2f} | "
              f"{mb(r['sum_rss']):>10} {r['sum_rss'] / base['sum_rss']:5.2f} | "
              f"{mb(r['sum_pss']):>10} {r['sum_pss'] / base['sum_pss']:5.2f} | "
              f"{mb(r['max_rss']):>15} {r['max_rss'] / base['max_rss']:5.2f} | {mb(r['max_worker_uss']):>17} | "
              f"{r['load_before']} -> {r['load_after']}")


def same_metrics(results: list[dict]) -> str:
    first = results[0]["metrics"]
    for r in results[1:]:
        if r["metrics"] != first:
            diff = sorted({(k, m) for k in set(first) | set(r["metrics"])
                           for m in set(first.get(k, {})) | set(r["metrics"].get(k, {}))
                           if first.get(k, {}).get(m) != r["metrics"].get(k, {}).get(m)})
            return f"DIFFERENT: {r['tree']} --workers {r['workers']} differs from the first run in {len(diff)} metric(s), e.g. {diff[:3]}"
    return f"identical in every run ({len(first)} cells, {sum(len(v) for v in first.values())} metrics, timings left out)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts; the first is the baseline")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the reduced suite (default 0)")
    ap.add_argument("--full", action="store_true", help="experiments/membership.yaml unchanged (3 seeds, 60 cells)")
    ap.add_argument("--only", default=None, help="passed to privbench run --only")
    ap.add_argument("--rounds", type=int, default=None, help="--set train.rounds=N in every cell")
    ap.add_argument("--interval", type=float, default=0.2, help="sampling period in seconds")
    ap.add_argument("--before-tree", type=Path, default=None,
                    help="also run another checkout (git archive <commit> | tar -x -C DIR), alternating with this one")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    if not os.path.exists("/proc/self/smaps_rollup"):
        raise SystemExit("needs /proc/PID/smaps_rollup (Linux >= 4.14) for PSS")
    trees = [REPO] if args.before_tree is None else [args.before_tree.resolve(), REPO]

    with tempfile.TemporaryDirectory(prefix="privbench-mem-") as tmp:
        folder = Path(tmp)
        suite = write_suite(folder, args.full, args.seeds)
        results = []
        for w in args.workers:
            for tree in trees:
                r = run_once(suite, w, folder, args, tree)
                results.append(r)
                print(f"# {r['tree']} --workers {w}: {r['wall_s']:.1f} s, load {r['load_before']} -> {r['load_after']}, "
                      f"{r['samples']} samples, up to {r['max_procs']} processes", flush=True)
                for role, m in sorted(r["per_role"].items()):
                    print(f"#   {role:<26} peak RSS {mb(m['rss'])} MB  PSS {mb(m['pss'])} MB  USS {mb(m['uss'])} MB", flush=True)

    print()
    print(f"suite: {'membership.yaml (full)' if args.full else f'membership.yaml, seeds {args.seeds}'}"
          f"{f', --only {args.only!r}' if args.only else ''}{f', train.rounds={args.rounds}' if args.rounds else ''}"
          f"{f'; before = {args.before_tree}' if args.before_tree else ''}")
    table(sorted(results, key=lambda r: (r["tree"] != "before", args.workers.index(r["workers"]))))
    print(f"cell metrics: {same_metrics(results)}")
    if args.before_tree is not None:
        for w in args.workers:
            b, t = (next(r for r in results if r["tree"] == k and r["workers"] == w) for k in ("before", "this"))
            print(f"--workers {w}: this ÷ before: sum PSS {t['sum_pss'] / b['sum_pss']:.2f}, sum RSS {t['sum_rss'] / b['sum_rss']:.2f}, "
                  f"max worker USS {t['max_worker_uss'] / b['max_worker_uss']:.2f}, wall {t['wall_s'] / b['wall_s']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2))


if __name__ == "__main__":
    main()
