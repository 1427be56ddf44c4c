"""The ``privbench`` commands, one module per command group; ``bench.cli`` holds the parser and dispatch.

- ``common``: exit codes and the ``privbench`` logger.
- ``validate``: ``validate``, ``list`` and ``schema`` (light: no torch, no MLflow).
- ``run``: ``run``: claims, local or remote cells, progress, interrupts, the summary at the end.
- ``summary``: the summary table ``run`` prints.
- ``report``: ``report``.
- ``ui``: ``ui``.
"""
