"""Issue 22, items 2–3: what privbench starts listens on loopback only, and writes no fixed /tmp name.

``privbench ui`` is started for real (its ``mlflow server`` and workers included) and the
listening TCP sockets of its whole process tree are read from ``/proc/net/tcp{,6}``; each must be
on 127.0.0.1 (or ::1). A local Ray cannot be bound to loopback (its gRPC servers take every
interface), so ``--executor ray`` without ``--address`` is refused before anything is logged
unless ``PRIVBENCH_RAY_LOCAL=1`` says the user accepts that.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import tiny_raw

REPO = Path(__file__).resolve().parents[1]
LINUX_PROC = Path("/proc/net/tcp").exists()


def _decode(addr: str) -> str:
    ip, port = addr.split(":")
    raw = bytes.fromhex(ip)
    if len(raw) == 4:
        host = socket.inet_ntop(socket.AF_INET, raw[::-1])
    else:  # /proc writes IPv6 as four little-endian 32-bit words
        host = socket.inet_ntop(socket.AF_INET6, b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))
    return f"{host}:{int(port, 16)}"


def _listening_inodes() -> dict[str, str]:
    """socket inode -> ``host:port`` of every listening TCP socket on this machine."""
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] == "0A":  # TCP_LISTEN
                out[parts[9]] = _decode(parts[1])
    return out


def _tree(root: int) -> set[int]:
    """``root`` and all its descendants (from /proc/<pid>/stat)."""
    parent = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                parent[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out, frontier = {root}, [root]
    while frontier:
        kids = [c for c, pp in parent.items() if pp in frontier and c not in out]
        out.update(kids)
        frontier = kids
    return out


def listening_sockets(root: int) -> list[str]:
    """``host:port`` of every TCP socket the process tree of ``root`` listens on."""
    inodes = _listening_inodes()
    found = []
    for pid in _tree(root):
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = target[len("socket:[") : -1]
                if inode in inodes:
                    found.append(inodes[inode])
    return sorted(set(found))


def _loopback(hostport: str) -> bool:
    host = hostport.rsplit(":", 1)[0]
    return host.startswith("127.") or host in ("::1", "::ffff:127.0.0.1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(not LINUX_PROC, reason="reads listening sockets from Linux's /proc/net/tcp")
def test_privbench_ui_listens_on_loopback_only_and_logs_privately(tmp_path):
    from mlflow.tracking import MlflowClient

    db = tmp_path / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()  # an (empty) store
    state = tmp_path / "state"
    port = _free_port()
    planted = Path("/tmp") / f"privbench-ui-{port}.log"  # the old fixed name: a symlink planted there must not be followed
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    made_link = False
    if not planted.exists():
        planted.symlink_to(victim)
        made_link = True
    env = {**os.environ, "PRIVBENCH_STATE_DIR": str(state), "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.Popen([sys.executable, "-m", "bench", "ui", "--tracking-uri", f"sqlite:///{db}", "--port", str(port)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        lines = []
        deadline = time.time() + 180
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C to stop" in line:
                break
        assert any("Ctrl-C to stop" in x for x in lines), "".join(lines)
        sockets = listening_sockets(proc.pid)
        assert sockets, "found no listening socket of privbench ui"
        assert all(_loopback(s) for s in sockets), sockets
        assert f"127.0.0.1:{port}" in sockets
        print(f"privbench ui listening sockets: {sockets}")
        # its log: a fresh name in the private per-user folder, not /tmp
        logs = list((state / "logs").glob("ui-*.log"))
        assert len(logs) == 1 and str(logs[0]) in "".join(lines)
        assert stat.S_IMODE(os.stat(state / "logs").st_mode) == 0o700
        assert stat.S_IMODE(os.stat(logs[0]).st_mode) == 0o600
        assert victim.read_text() == "untouched"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        if made_link:
            planted.unlink()


def test_a_planted_symlink_as_the_private_folder_is_refused(tmp_path, monkeypatch):
    from bench.safefiles import open_private, private_dir
    from bench.types import ConfigError

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "state").symlink_to(elsewhere)
    monkeypatch.setenv("PRIVBENCH_STATE_DIR", str(tmp_path / "state"))
    with pytest.raises(ConfigError, match=r"not a folder \(a symlink or a file\); privbench does not follow it"):
        private_dir("logs")
    assert not list(elsewhere.iterdir())
    # a folder of ours left open to others is closed; each file has a fresh name, mode 0600
    monkeypatch.setenv("PRIVBENCH_STATE_DIR", str(tmp_path / "ok"))
    (tmp_path / "ok").mkdir(mode=0o777)
    os.chmod(tmp_path / "ok", 0o777)
    fh1, p1 = open_private("logs", "ui-5000-")
    fh2, p2 = open_private("logs", "ui-5000-")
    fh1.close()
    fh2.close()
    assert p1 != p2 and p1.parent == tmp_path / "ok" / "logs"
    assert stat.S_IMODE(os.stat(tmp_path / "ok").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(p1).st_mode) == 0o600


def test_no_fixed_tmp_names_in_the_library():
    """No module builds a file name under the shared temporary folder by hand."""
    offenders = []
    for path in [*REPO.glob("bench/**/*.py"), *REPO.glob("attacks/**/*.py"), *REPO.glob("defenses/**/*.py")]:
        text = path.read_text(encoding="utf-8")
        if "gettempdir()" in text or '"/tmp/' in text or "'/tmp/" in text:
            offenders.append(str(path.relative_to(REPO)))
    assert not offenders, offenders


def test_a_local_ray_is_refused_unless_accepted(tmp_path, monkeypatch, capsys):
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'privbench[ray]')")
    if ray.is_initialized():
        pytest.skip("a Ray instance is already running in this process")
    from bench.cli import main

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("PRIVBENCH_RAY_LOCAL", raising=False)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"suite": "raylocal", "base": tiny_raw(), "seeds": [0]}))
    db = tmp_path / "store" / "m.db"
    code = main(["run", str(path), "-q", "--executor", "ray", "--tracking-uri", f"sqlite:///{db}"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and "PRIVBENCH_RAY_LOCAL=1" in err and "--workers N" in err, err
    assert not db.exists()
    assert not ray.is_initialized()
