"""Files privbench writes for itself (logs, temporary files): in a private per-user folder.

A fixed name under a shared ``/tmp`` (``/tmp/privbench-ui-5000.log``) lets any other user plant a
symlink there first, and privbench (perhaps run as root) then overwrites the link's target. So
privbench's own files live in one folder per user, created ``0700`` and checked (a real folder,
not a symlink, owned by this user, closed to others) before each use, and every file in it gets
a fresh random name opened with ``O_EXCL | O_NOFOLLOW``.

The folder is ``$PRIVBENCH_STATE_DIR`` if set, else ``$XDG_STATE_HOME/privbench``, else
``~/.local/state/privbench``.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import IO

from bench.types import ConfigError


def state_root() -> Path:
    """The per-user folder privbench's own files go to (not created here)."""
    env = os.environ.get("PRIVBENCH_STATE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "state"
    return base / "privbench"


def _check_private(path: Path) -> None:
    """Refuse a folder that is a symlink, not a folder, not ours, or open to other users."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot use it for privbench's own files ({exc.strerror}); set PRIVBENCH_STATE_DIR to a private folder") from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{path}: not a folder (a symlink or a file); privbench does not follow it: remove it or set PRIVBENCH_STATE_DIR")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise ConfigError(f"{path}: owned by uid {st.st_uid}, not by you (uid {os.getuid()}); set PRIVBENCH_STATE_DIR to a folder of your own")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700, follow_symlinks=False)  # ours: close it (an older privbench or a umask left it open)


def private_dir(kind: str = "logs") -> Path:
    """``state_root()/kind``, created ``0700`` where missing and checked before use.

    Raises:
        ConfigError: the folder (or the root) is a symlink, not a folder, or another user's.
    """
    root = state_root()
    folder = root / kind
    for p in (root, folder):
        try:
            os.makedirs(p, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{p}: cannot create privbench's folder for its own files ({exc.strerror}); set PRIVBENCH_STATE_DIR to a writable folder") from None
        _check_private(p)
    return folder


def open_private(kind: str, prefix: str, suffix: str = ".log") -> tuple[IO[str], Path]:
    """A new file with a random name in :func:`private_dir`, opened for writing (mode ``0600``,
    ``O_EXCL``: a name someone planted is never opened, a symlink never followed)."""
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=private_dir(kind))
    return os.fdopen(fd, "w"), Path(name)
