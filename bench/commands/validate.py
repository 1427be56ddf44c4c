"""``privbench validate``, ``list`` and ``schema``: check a suite, show components, print the schema.

Light commands: without ``--data`` they import neither torch nor MLflow (``tests/test_startup.py``).
"""

from __future__ import annotations

import sys

from bench.commands.common import EXIT_BAD_INPUT
from bench.types import ConfigError


def _every_error(path: str) -> list[str]:
    """All problems the suite schema finds in the file (empty when it cannot be read as YAML)."""
    from bench.catalog import schema_errors
    from bench.config import load_yaml

    try:
        return schema_errors(load_yaml(path))
    except (ConfigError, OSError):
        return []  # the loader names an unreadable file or broken YAML in its own one line


def _describe_data(suite) -> None:
    """How each distinct dataset of the suite was read (a CSV: per column and per hospital)."""
    from bench.components import registry

    shown = set()
    for cell in suite.cells:
        data = cell.config.data
        describe = getattr(registry("dataset").get(data.name), "describe", None)
        if describe is None or data in shown:
            continue
        shown.add(data)
        print(describe(data, seed=cell.config.seed))
        print()


def cmd_validate(args) -> int:
    from bench.suite import filter_cells, load_suite

    problems = _every_error(args.suite)
    if len(problems) > 1:  # one at a time would take as many runs as there are problems
        print(f"privbench: error: {args.suite}: {len(problems)} problems (`privbench list NAME` shows a component's keys):", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        return EXIT_BAD_INPUT
    suite = filter_cells(load_suite(args.suite, args.set), args.only)
    if args.data:
        from bench.data import check_data

        check_data(c.config for c in suite.cells)
        _describe_data(suite)
        from bench.data import small_site_report

        for line in dict.fromkeys(small_site_report(c.config.data, c.config.seed) for c in suite.cells):
            if line:
                print(line)
    print(f"{args.suite}: suite {suite.name!r} is valid{' (data loaded and split)' if args.data else ''}: {len(suite.cells)} cells")
    for cell in suite.cells:
        print(f"  {cell.run_key}  {cell.name}")
    return 0


def cmd_list(args) -> int:
    from bench.catalog import describe, overview

    print(describe(args.name) if args.name else overview())
    return 0


def cmd_schema(args) -> int:
    import json

    from bench.catalog import suite_schema

    print(json.dumps(suite_schema(), indent=2, default=str))
    return 0
