"""``privbench report``: figures, the summary table and report.html of a suite, read back from MLflow."""

from __future__ import annotations

import sys

from bench.commands.common import _reaped_line, log


def cmd_report(args) -> int:
    from bench.report import write_report
    from bench.tracking import MlflowTracker

    tracker = MlflowTracker(args.tracking_uri, create=False)  # a bad, missing or unreachable store: one line, exit 2
    try:
        reaped = tracker.reap_gone(args.suite)
    except Exception as exc:  # a read-only store can still be reported on
        log.warning("could not check for runs whose process is gone: %s", exc)
        reaped = []
    if reaped:
        print(_reaped_line(reaped), file=sys.stderr)
    res = write_report(args.suite, tracker.uri, args.out, attach=not args.no_attach)
    print(f"suite {args.suite!r}: {res.settings} defense settings; wrote {len(res.files)} files to {res.out_dir}/ ({len(res.figures)} figures)")
    for f in res.figures:
        print(f"  {f.file:<28} {f.title}")
    for s in res.skipped:
        print(f"  skipped: {s.title}: {s.reason}")
    print(f"open {res.out_dir / 'report.html'}")
    if res.parent_run_id:
        print(f"attached as artifacts report/* of the suite run {res.parent_run_id}")
    for line in _left_out_lines(res):
        print(line, file=sys.stderr)
    if not res.left_out:
        print(f"cells: all {res.in_report} in the report")
    return 0


_LEFT_OUT_FIX = {
    "FAILED": "rerun the suite to retry them",
    "KILLED": "rerun the suite to retry them",
    "RUNNING": "report again when they finish",
    "missing": "run the suite to add them",
}


def _left_out_lines(res) -> list[str]:
    """One line per kind of cell the report left out (FAILED, KILLED, RUNNING, missing): each cell and why."""
    if not res.left_out:
        return []
    lines = [f"cells: {res.in_report} in the report, {len(res.left_out)} left out"]
    for status in ("FAILED", "KILLED", "RUNNING", "missing"):
        group = [c for c in res.left_out if c.status == status]
        if group:
            names = "; ".join(f"{c.name} ({c.reason})" for c in group)
            lines.append(f"{len(group)} cell(s) {status} and are left out of the report: {names}; {_LEFT_OUT_FIX[status]}")
    return lines
