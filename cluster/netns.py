"""Two real network nodes on one machine, for multi-node drills: Linux network namespaces joined by a veth pair.

    with TwoNodes() as nodes:                       # needs root and `ip` (iproute2)
        nodes.run(0, ["ray", "start", "--head", f"--node-ip-address={nodes.ip[0]}", ...])
        nodes.popen(1, [...])                       # a command "on" node 1
        nodes.link_down(1); nodes.link_up(1)        # a network fault on node 1's side

Each node is a namespace with its own loopback and one end of the veth pair, renamed ``IFNAME`` (``dnafm0``) on
both nodes so that one ``GLOO_SOCKET_IFNAME=dnafm0`` serves every node, addressed from a /30 of
``10.250.0.0/16`` chosen per testbed; the namespaces have no other interface and no route, so nothing they send
leaves the machine. They share the file system (and /dev/shm) with everything else, as nodes on a shared file
system do. Closing the testbed kills every process left in the namespaces and deletes them (which removes the
veth pair), also after a failure; ``python -m cluster.netns --cleanup`` removes testbeds a killed run left.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

PREFIX = "dnafm-"
IFNAME = "dnafm0"  # the veth end's name inside each namespace


def unavailable() -> str | None:
    """Why namespaces cannot be made here (None when they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is missing"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


class TwoNodes:
    """Two namespaces ``dnafm-<id>-0`` / ``-1`` joined by a veth pair (created as ``dn<id>a`` / ``dn<id>b``, then
    moved into the namespaces and renamed ``IFNAME``)."""

    def __init__(self) -> None:
        why = unavailable()
        if why:
            raise RuntimeError(why)
        tag = f"{os.getpid() % 10000:04d}{random.randrange(100):02d}"
        self.ns = [f"{PREFIX}{tag}-0", f"{PREFIX}{tag}-1"]
        self.veth = [f"dn{tag}a", f"dn{tag}b"]  # interface names must fit 15 bytes
        block = random.randrange(1, 16383) * 4  # a /30 inside 10.250.0.0/16
        self.ip = [f"10.250.{block // 256}.{block % 256 + 1}", f"10.250.{block // 256}.{block % 256 + 2}"]
        self._procs: list[subprocess.Popen] = []

    def __enter__(self) -> TwoNodes:
        try:
            for ns in self.ns:
                _ip("netns", "add", ns)
            _ip("link", "add", self.veth[0], "type", "veth", "peer", "name", self.veth[1])
            for i in (0, 1):
                _ip("link", "set", self.veth[i], "netns", self.ns[i])
                self.exec(i, ["ip", "link", "set", self.veth[i], "name", IFNAME])
                self.exec(i, ["ip", "addr", "add", f"{self.ip[i]}/30", "dev", IFNAME])
                self.exec(i, ["ip", "link", "set", IFNAME, "up"])
                self.exec(i, ["ip", "link", "set", "lo", "up"])
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def prefix(self, i: int) -> list[str]:
        """The command prefix that runs a program on node ``i``."""
        return ["ip", "netns", "exec", self.ns[i]]

    def exec(self, i: int, cmd: list[str]) -> None:
        subprocess.run([*self.prefix(i), *cmd], check=True, capture_output=True, text=True)

    def run(self, i: int, cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
        """Run ``cmd`` on node ``i`` and wait (``subprocess.run`` keyword arguments)."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run([*self.prefix(i), *cmd], **kwargs)

    def popen(self, i: int, cmd: list[str], **kwargs: Any) -> subprocess.Popen:
        """Start ``cmd`` on node ``i`` in a process group of its own (killed by ``close``)."""
        proc = subprocess.Popen([*self.prefix(i), *cmd], start_new_session=True, **kwargs)
        self._procs.append(proc)
        return proc

    def link_down(self, i: int) -> None:
        self.exec(i, ["ip", "link", "set", IFNAME, "down"])

    def link_up(self, i: int) -> None:
        self.exec(i, ["ip", "link", "set", IFNAME, "up"])

    def pids(self, i: int) -> list[int]:
        """Every process running in node ``i``'s namespace."""
        out = _ip("netns", "pids", self.ns[i], check=False).stdout
        return [int(p) for p in out.split()]

    def kill_node(self, i: int) -> None:
        """SIGKILL every process of node ``i`` (a lost node: its raylet, workers, everything)."""
        for pid in self.pids(i):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        for proc in self._procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for i, ns in enumerate(self.ns):
            if ns in _existing():
                self.kill_node(i)
        time.sleep(0.2)  # let the kernel reap them before the namespace goes
        for ns in self.ns:
            if ns in _existing():
                _ip("netns", "del", ns, check=False)


def _existing() -> list[str]:
    return [line.split()[0] for line in _ip("netns", "list", check=False).stdout.splitlines() if line.strip()]


def cleanup() -> int:
    """Remove every dnafm testbed namespace (and its processes) a killed run left behind."""
    n = 0
    for ns in _existing():
        if ns.startswith(PREFIX):
            for pid in (int(p) for p in _ip("netns", "pids", ns, check=False).stdout.split()):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _ip("netns", "del", ns, check=False)
            n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m cluster.netns", description="Two-node testbed on this machine."
    )
    p.add_argument("--cleanup", action="store_true", help="remove testbeds left by killed runs")
    p.add_argument("--check", action="store_true", help="make a testbed, connect across it, remove it")
    args = p.parse_args(argv)
    if args.cleanup:
        print(f"removed {cleanup()} namespace(s)")
        return 0
    why = unavailable()
    if why:
        print(f"cannot make a testbed here: {why}", file=sys.stderr)
        return 1
    with TwoNodes() as nodes:
        # a listener on node 1, a client on node 0: the only way between them is the veth pair
        server = nodes.popen(1, [sys.executable, "-m", "http.server", "8000", "--bind", nodes.ip[1]],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        code = (
            "import time, urllib.request\n"
            "for _ in range(50):\n"
            "    try:\n"
            f"        urllib.request.urlopen('http://{nodes.ip[1]}:8000/', timeout=1); print('ok'); break\n"
            "    except OSError: time.sleep(0.1)\n"
        )
        got = nodes.run(0, [sys.executable, "-c", code]).stdout.strip()
        server.kill()
        ok = got == "ok"
        print(f"node 0 {nodes.ip[0]} ({nodes.ns[0]}) <-> node 1 {nodes.ip[1]} ({nodes.ns[1]}): "
              f"{'reachable' if ok else 'NOT reachable'}")  # fmt: skip
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
