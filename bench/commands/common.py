"""What the commands share: exit codes, the ``privbench`` logger, the line about runs whose process is gone.

Bad input ends with one line on stderr that names the problem and the fix, exit code
:data:`EXIT_BAD_INPUT`, and nothing logged.
"""

from __future__ import annotations

import logging

EXIT_BAD_INPUT = 2
EXIT_FAILED_CELLS = 1
EXIT_INTERRUPTED = 130

log = logging.getLogger("privbench")


def _reaped_line(reaped) -> str:
    names = "; ".join(f"{r.name} ({r.owner})" for r in reaped[:5]) + (f"; and {len(reaped) - 5} more" if len(reaped) > 5 else "")
    return f"marked {len(reaped)} RUNNING run(s) FAILED whose process is gone (killed, or its machine lost): {names}"
