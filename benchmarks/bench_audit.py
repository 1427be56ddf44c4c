"""Audits that can fail: what one run certifies, estimates and could ever certify, and which
deliberately broken DP implementations each audit catches.

1. ``sweep`` and ``cost`` — DP-SGD at accountant ε ∈ {1, 2, 4, 8} (δ = 1e-5) with the white-box
   ``dpsgd_audit`` (5,000 gradient canaries) and client_dp at two noise levels with
   ``client_canary_audit`` (5,000 canary clients): certified bound (f-DP, Steinke), GDP-family
   ε, Gaussian-fit estimate with its interval, the ceiling of the analysis (the same analysis
   on an idealized simulation of the claimed mechanism) and the audit's cost as a ratio of the
   same cell's training time without the audit.
2. ``detect`` — the detection matrix: each test-only bug (``tests/mutants.py``) in its documented
   configuration, honest and broken, under the white-box audits and the black-box
   ``canary_audit``; a bug is caught when the cell is tagged ``audit_violation=true``.
3. ``alarms`` — the honest implementation at every bug configuration over ``--seeds`` seeds:
   any ``audit_violation=true`` is a false alarm (a bug too).

Usage::

    python benchmarks/bench_audit.py                    # everything, ~25 min on 2 cores
    python benchmarks/bench_audit.py --part sweep
    python benchmarks/bench_audit.py --part alarms --seeds 20

Heart-disease files: ``--data-dir`` (default ``$PRIVBENCH_DATA_DIR``, else ../shared/data/uci-heart-disease).
Results and discussion: docs/bench-audit.md.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench.config import parse_experiment  # noqa: E402
from bench.runner import run_in_memory  # noqa: E402
from mutants import MUTANTS, _heart, bug_config, substituted  # noqa: E402


def run(raw: dict, bug: str | None = None):
    cfg = parse_experiment(raw)
    if bug is None:
        return run_in_memory(cfg)
    with substituted(bug):
        return run_in_memory(cfg)


def audit_rows(result) -> list[tuple[str, str, dict]]:
    """(audit, observation, numbers) for every audit observation of a cell."""
    rows = []
    names = sorted({k.split("/")[1] for k in result.metrics if k.startswith("audit/") and k.count("/") >= 3})
    for name in names:
        obs = sorted({k.split("/")[2] for k in result.metrics if k.startswith(f"audit/{name}/") and k.count("/") == 3})
        for o in obs:
            g = lambda k: result.metrics.get(f"audit/{name}/{o}/{k}", math.nan)  # noqa: E731
            rows.append((name, o, {
                "eps": result.metrics.get(f"audit/{name}/accountant_epsilon", math.nan),
                "bound": g("epsilon_lower_bound"), "steinke": g("epsilon_lower_bound_steinke"),
                "gdp": g("gdp_epsilon_lower_bound"), "est": g("epsilon_estimate"),
                "est_lo": g("epsilon_estimate_low"), "est_hi": g("epsilon_estimate_high"),
                "est_2v": g("epsilon_estimate_two_variance"),
                "ceil": g("ceiling_epsilon_lower_bound"), "ceil_est": g("ceiling_epsilon_estimate"),
                "max": g("max_certifiable_epsilon"), "rejected": g("claim_rejected"), "rejectable": g("claim_rejectable"),
            }))
    return rows


def f(x: float, nd: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def sweep_cells(data_dir: str) -> list[tuple[str, dict]]:
    cells = [(f"dp_sgd ε={e:g}", _heart(data_dir, defenses=[{"name": "dp_sgd", "target_epsilon": e, "max_grad_norm": 1.0}],
                                       attacks=[{"name": "dpsgd_audit", "num_canaries": 5000}])) for e in (1.0, 2.0, 4.0, 8.0)]
    cells += [(f"client_dp z={z:g}", _heart(data_dir, defenses=[{"name": "client_dp", "noise_multiplier": z, "clip_norm": 0.5}],
                                            attacks=[{"name": "client_canary_audit", "num_canaries": 5000}])) for z in (2.0, 5.0)]
    return cells


def sweep(cells: list[tuple[str, dict]]) -> None:
    print("\n## Sweep (seed 0, δ = 1e-5, 95 % confidence)\n")
    print("| cell | audit / observation | accountant ε | certified bound (f-DP) | Steinke | GDP-family ε | estimate [95 % CI] | "
          "two-variance estimate | ceiling: bound / estimate | bound / ceiling | bound / ε | estimate / ε | max certifiable |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, raw in cells:
        res = run(raw)
        for name, o, r in audit_rows(res):
            print(f"| {label} | {name} / {o} | {f(r['eps'])} | {f(r['bound'])} | {f(r['steinke'])} | {f(r['gdp'])} | "
                  f"{f(r['est'])} [{f(r['est_lo'])}, {f(r['est_hi'])}] | {f(r['est_2v'])} | {f(r['ceil'])} / {f(r['ceil_est'])} | "
                  f"{f(r['bound'] / r['ceil'])} | {f(r['bound'] / r['eps'])} | {f(r['est'] / r['eps'])} | {f(r['max'])} |")
        sys.stdout.flush()


def cost(cells, repeats: int = 3) -> None:
    """Training time of each cell with and without its audit (median of ``repeats``), with σ
    fixed to the calibrated value so that the calibration's search is not timed."""
    print(f"\n## Cost of the audit (same cell and seed, median of {repeats} runs; σ fixed, so calibration is not timed)\n")
    print("| cell | training without audit (s) | training with canaries (s) | ratio | audit scoring (s) | (training + scoring) / training without |")
    print("|---|---|---|---|---|---|")
    for label, raw in cells:
        raw = copy.deepcopy(raw)
        d = raw["defenses"][0]
        if "target_epsilon" in d:
            sigma = run({**raw, "attacks": []}).metrics["defense/dp_sgd/site/cleveland/noise_multiplier"]
            raw["defenses"] = [{**{k: v for k, v in d.items() if k != "target_epsilon"}, "noise_multiplier": sigma}]
        name = raw["attacks"][0]["name"]
        plain = [run({**raw, "attacks": []}).metrics["cost/train_seconds"] for _ in range(repeats)]
        audited = [run(raw).metrics for _ in range(repeats)]
        t0 = statistics.median(plain)
        t1 = statistics.median(m["cost/train_seconds"] for m in audited)
        ta = statistics.median(m[f"cost/attack/{name}/seconds"] for m in audited)
        print(f"| {label} | {t0:.2f} | {t1:.2f} | {t1 / t0:.2f}× | {ta:.2f} | {(t1 + ta) / t0:.2f}× |")
        sys.stdout.flush()


def caught(result, name: str, obs: str) -> bool:
    """This observation of this audit certifies more than the accountant's ε or rejects its profile."""
    g = lambda k: result.metrics.get(f"audit/{name}/{k}", math.nan)  # noqa: E731
    return g(f"{obs}/epsilon_lower_bound") > g("accountant_epsilon") or g(f"{obs}/claim_rejected") == 1


def detect(data_dir: str, seeds: int, bugs=None) -> None:
    print(f"\n## Detection matrix ({seeds} seed(s) per cell; caught = this observation certifies more than the "
          "accountant's ε or rejects its claimed profile; the cell is then tagged audit_violation=true)\n")
    print("| bug | audit / observation | honest: caught | broken: caught | broken: accountant ε | broken: bound (f-DP) | "
          "broken: GDP-family ε | broken: estimate [95 % CI] | broken: max certifiable |")
    print("|---|---|---|---|---|---|---|---|---|")
    for bug in bugs or MUTANTS:
        audits = [None]  # the documented white-box audit
        if MUTANTS[bug][0] == "dp_sgd":
            audits.append([{"name": "canary_audit", "num_canaries": 100}])  # the black-box audit, same bug
        for attacks in audits:
            honest, broken = [], []
            for seed in range(seeds):
                raw = bug_config(bug, data_dir, attacks)
                raw["seed"] = seed
                honest.append(run(raw))
                broken.append(run(raw, bug))
            for name, o, r in audit_rows(broken[-1]):
                h = sum(caught(x, name, o) for x in honest)
                b = sum(caught(x, name, o) for x in broken)
                print(f"| {bug} | {name} / {o} | {h}/{seeds} | {b}/{seeds} | {f(r['eps'])} | {f(r['bound'])} | {f(r['gdp'])} | "
                      f"{f(r['est'])} [{f(r['est_lo'])}, {f(r['est_hi'])}] | {f(r['max'])} |")
            sys.stdout.flush()


def alarms(data_dir: str, seeds: int, bugs=None) -> None:
    print(f"\n## False alarms of the honest implementation ({seeds} seeds per configuration)\n")
    print("| configuration | audit | violations | bound / ε (max over seeds) | seconds |")
    print("|---|---|---|---|---|")
    done = set()
    for bug in bugs or MUTANTS:
        raw0 = bug_config(bug, data_dir)
        key = repr((raw0["defenses"], raw0["train"], raw0["attacks"]))
        if key in done:
            continue
        done.add(key)
        t = time.perf_counter()
        bad, worst = 0, 0.0
        for seed in range(seeds):
            raw = copy.deepcopy(raw0)
            raw["seed"] = seed
            res = run(raw)
            bad += res.tags.get("audit_violation") == "true"
            for _, _, r in audit_rows(res):
                worst = max(worst, r["bound"] / r["eps"])
        print(f"| {bug} config | {raw0['attacks'][0]['name']} | {bad}/{seeds} | {worst:.2f} | {time.perf_counter() - t:.0f} |")
        sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["sweep", "cost", "detect", "alarms", "all"], default="all")
    ap.add_argument("--seeds", type=int, default=20, help="seeds per honest configuration (alarms)")
    ap.add_argument("--detect-seeds", type=int, default=3, help="seeds per cell of the detection matrix")
    ap.add_argument("--bugs", nargs="*", choices=sorted(MUTANTS), help="only these bugs (detect, alarms)")
    ap.add_argument("--data-dir", default=os.environ.get("PRIVBENCH_DATA_DIR", str(ROOT.parent / "shared/data/uci-heart-disease")))
    args = ap.parse_args()
    logging.disable(logging.CRITICAL)  # the AUDIT VIOLATION errors are the point here
    if args.part in ("sweep", "all"):
        sweep(sweep_cells(args.data_dir))
    if args.part in ("cost", "all"):
        cost(sweep_cells(args.data_dir))
    if args.part in ("detect", "all"):
        detect(args.data_dir, args.detect_seeds, args.bugs)
    if args.part in ("alarms", "all"):
        alarms(args.data_dir, args.seeds, args.bugs)


if __name__ == "__main__":
    main()
