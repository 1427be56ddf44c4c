"""Audits that can fail: what one run certifies, estimates and could ever certify, and which
deliberately broken DP implementations each audit catches.

1. ``sweep`` and ``cost`` — DP-SGD at accountant ε ∈ {1, 2, 4, 8} (δ = 1e-5) with the white-box
   ``dpsgd_audit`` (5,000 gradient canaries) and client_dp at two noise levels with
   ``client_canary_audit`` (5,000 canary clients): certified bound (f-DP, Steinke), GDP-family
   ε, Gaussian-fit estimate with its interval, the ceiling of the analysis (the same analysis
   on an idealized simulation of the claimed mechanism) and the audit's cost as a ratio of the
   same cell's training time without the audit.
2. ``detect`` — the detection matrix: each test-only bug (``tests/mutants.py``) in its documented
   configuration, broken, over ``--detect-seeds`` seeds: its true ε (the accountant on what really
   ran, ``mutants.TRUE_MECHANISM``) against the claimed ε, how often the cell's verdict is
   ``violation`` (certified) and at least ``suspect``, which observations caught it, and the
   audit's power; "met" applies issue 20's rule (true ≥ 3× claimed: violation in ≥ 2 of 3 seeds;
   ≥ 1.5×: at least suspect in ≥ 2 of 3).
3. ``alarms`` — the honest implementation at every distinct bug configuration (``--seeds`` seeds
   at the first, the main ε = 2 cell; ``--other-seeds`` at the others): violations and suspects
   are false alarms; with the bound's share of its idealized ceiling and the audit's power.

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
    """CPU seconds of each cell with and without its audit (median of ``repeats``, interleaved),
    with σ fixed to the calibrated value so that the calibration's search is not timed. CPU
    time of this process (``time.process_time``), not wall time: on a shared machine wall time
    swings several-fold with the load, CPU time does not."""
    import torch

    torch.set_num_threads(1)  # one thread: CPU time then counts work, not threads spinning on a loaded machine
    print(f"\n## Cost of the audit (same cell and seed, median of {repeats} interleaved runs, CPU seconds, one thread; σ fixed)\n")
    print("| cell | cell without audit (CPU s) | training with canaries (CPU s) | audit scoring (CPU s) | cell with audit (CPU s) | "
          "training with ÷ without canaries | whole cell with ÷ without audit |")
    print("|---|---|---|---|---|---|---|")
    for label, raw in cells:
        raw = copy.deepcopy(raw)
        d = raw["defenses"][0]
        if "target_epsilon" in d:
            sigma = run({**raw, "attacks": []}).metrics["defense/dp_sgd/site/cleveland/noise_multiplier"]
            raw["defenses"] = [{**{k: v for k, v in d.items() if k != "target_epsilon"}, "noise_multiplier": sigma}]
        name = raw["attacks"][0]["name"]
        plain, audited = [], []
        for _ in range(repeats):
            for attacks, out in (([], plain), (raw["attacks"], audited)):
                t = time.process_time()
                res = run({**raw, "attacks": attacks})
                out.append((time.process_time() - t, res.metrics))
        c0 = statistics.median(c for c, _ in plain)
        c1 = statistics.median(c for c, _ in audited)
        # training share: the cell's own wall-time split applied to its CPU time
        share = statistics.median(m["cost/train_seconds"] / m["cost/seconds"] for _, m in audited)
        share0 = statistics.median(m["cost/train_seconds"] / m["cost/seconds"] for _, m in plain)
        scoring = statistics.median(m[f"cost/attack/{name}/seconds"] / m["cost/seconds"] for _, m in audited) * c1
        print(f"| {label} | {c0:.2f} | {share * c1:.2f} | {scoring:.2f} | {c1:.2f} | {share * c1 / (share0 * c0):.2f}× | {c1 / c0:.2f}× |")
        sys.stdout.flush()


def caught(result, name: str, obs: str) -> bool:
    """This observation of this audit certifies more than the accountant's ε or rejects its profile."""
    g = lambda k: result.metrics.get(f"audit/{name}/{k}", math.nan)  # noqa: E731
    return g(f"{obs}/epsilon_lower_bound") > g("accountant_epsilon") or g(f"{obs}/claim_rejected") == 1


def audited(result) -> tuple[str, str]:
    """(audit name, audited party) of a cell's white-box audit."""
    name = next(k.split("/")[1] for k in result.metrics if k.startswith("audit/") and k.endswith("/accountant_epsilon") and k.count("/") == 2)
    if name == "client_canary_audit":
        return name, "federation"
    steps = {k.split("/")[3]: v for k, v in result.metrics.items() if k.startswith("defense/dp_sgd/site/") and k.endswith("/steps")}
    return name, max(steps, key=steps.get)  # the audit's default site: the hospital with the most records (most steps)


def requirement(ratio: float) -> str:
    """What issue 20 asks of a bug whose true ε is ``ratio`` × the claimed ε."""
    return "violation in ≥ 2/3" if ratio >= 3 else "≥ suspect in ≥ 2/3" if ratio >= 1.5 else "none (< 1.5×)"


def detect(data_dir: str, seeds: int, bugs=None, accountant: str | None = None) -> None:
    print(f"\n## Detection matrix ({seeds} seeds per bug, broken implementation; true ε = the accountant on what really ran)\n")
    print("| bug | claimed ε | true ε | true / claimed | violation | ≥ suspect | issue 20 asks | met | caught by (observations) | "
          "power k: σ/k, q·k (seed 0) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    from mutants import true_epsilon

    for bug in bugs or MUTANTS:
        broken = []
        for seed in range(seeds):
            raw = bug_config(bug, data_dir)
            raw["seed"] = seed
            if accountant is not None:
                raw["privacy"] = {**raw["privacy"], "accountant": accountant}
            broken.append(run(raw, bug))
        r0 = broken[0]
        name, party = audited(r0)
        claimed = r0.metrics[f"audit/{name}/accountant_epsilon"]
        delta = r0.metrics[f"audit/{name}/delta"]
        true = true_epsilon(bug, r0.record.dp_events, accountant or "rdp", delta, party if name == "dpsgd_audit" else "federation")
        ratio = true / claimed
        viol = sum(x.tags.get("audit_verdict") == "violation" for x in broken)
        sus = sum(x.tags.get("audit_verdict") in ("violation", "suspect") for x in broken)
        need = requirement(ratio)
        met = viol >= 2 if ratio >= 3 else sus >= 2 if ratio >= 1.5 else True
        obs = sorted({k.split("/")[2] for k in r0.metrics if k.startswith(f"audit/{name}/") and k.count("/") == 3})
        by = ", ".join(f"{o} {sum(caught(x, name, o) for x in broken)}/{seeds}" for o in obs)
        k_sigma = r0.metrics.get(f"audit/{name}/detectable_factor", math.nan)
        k_rate = r0.metrics.get(f"audit/{name}/all_rounds/detectable_factor_rate", math.nan)
        print(f"| {bug} | {f(claimed)} | {'∞' if math.isinf(true) else f(true)} | {'∞' if math.isinf(ratio) else f(ratio, 1) + '×'} | "
              f"{viol}/{seeds} | {sus}/{seeds} | {need} | {'yes' if met else '**no**'} | {by} | {k_sigma:g}, {k_rate:g} |")
        sys.stdout.flush()


def alarms(data_dir: str, seeds: int, other_seeds: int, bugs=None) -> None:
    print(f"\n## The honest implementation (false alarms; {seeds} seeds at the main configuration, {other_seeds} at the others)\n")
    print("| configuration | audit | seeds | violations | suspects | bound / ε, max | every_step bound / ceiling, mean [min, max] | "
          "all_rounds bound / ceiling, mean | power k (σ/k), median | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    done = set()
    for bug in bugs or MUTANTS:
        raw0 = bug_config(bug, data_dir)
        key = repr((raw0["defenses"], raw0["train"], raw0["attacks"], raw0["model"]))
        if key in done:
            continue
        main_cfg = not done
        done.add(key)
        n = seeds if main_cfg else other_seeds
        t = time.perf_counter()
        results = []
        for seed in range(n):
            raw = copy.deepcopy(raw0)
            raw["seed"] = seed
            results.append(run(raw))
        name, _ = audited(results[0])
        viol = sum(r.tags.get("audit_verdict") == "violation" for r in results)
        sus = sum(r.tags.get("audit_verdict") == "suspect" for r in results)
        worst = max(rr["bound"] / rr["eps"] for r in results for _, _, rr in audit_rows(r))
        g = lambda r, k: r.metrics.get(f"audit/{name}/{k}", math.nan)  # noqa: E731
        step = [g(r, "every_step/bound_to_ceiling") for r in results]
        step = [v for v in step if not math.isnan(v)]
        rounds = [g(r, "all_rounds/bound_to_ceiling") for r in results]
        ks = sorted(g(r, "detectable_factor") for r in results)
        d = raw0["defenses"][0]
        label = f"{d['name']} " + (f"ε={d['target_epsilon']:g}" if "target_epsilon" in d else f"σ={d.get('noise_multiplier')}") + \
            f", {raw0['attacks'][0].get('num_canaries')} canaries" + (f" ({raw0['attacks'][0]['directions']})" if "directions" in raw0["attacks"][0] else "")
        stepcol = f"{statistics.mean(step):.2f} [{min(step):.2f}, {max(step):.2f}]" if step else "–"
        print(f"| {label} (as for {bug}) | {name} | {n} | {viol}/{n} | {sus}/{n} | {worst:.2f} | {stepcol} | "
              f"{statistics.mean(rounds):.2f} | {ks[len(ks) // 2]:g} | {time.perf_counter() - t:.0f} |")
        sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["sweep", "cost", "detect", "alarms", "all"], default="all")
    ap.add_argument("--seeds", type=int, default=20, help="seeds of the honest main configuration (alarms)")
    ap.add_argument("--other-seeds", type=int, default=3, help="seeds of the other honest configurations (alarms)")
    ap.add_argument("--detect-seeds", type=int, default=3, help="seeds per cell of the detection matrix")
    ap.add_argument("--bugs", nargs="*", choices=sorted(MUTANTS), help="only these bugs (detect, alarms)")
    ap.add_argument("--accountant", choices=["rdp", "prv"], help="detect: override the documented configurations' accountant")
    ap.add_argument("--data-dir", default=os.environ.get("PRIVBENCH_DATA_DIR", str(ROOT.parent / "shared/data/uci-heart-disease")))
    args = ap.parse_args()
    logging.disable(logging.CRITICAL)  # the AUDIT VIOLATION errors are the point here
    if args.part in ("sweep", "all"):
        sweep(sweep_cells(args.data_dir))
    if args.part in ("cost", "all"):
        cost(sweep_cells(args.data_dir))
    if args.part in ("detect", "all"):
        detect(args.data_dir, args.detect_seeds, args.bugs, args.accountant)
    if args.part in ("alarms", "all"):
        alarms(args.data_dir, args.seeds, args.other_seeds, args.bugs)


if __name__ == "__main__":
    main()
