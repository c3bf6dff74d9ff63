"""Real Ray clusters for tests and drills: ``ray start`` processes on this machine, or inside the network
namespaces of a two-node testbed (``cluster.netns``), and their clean removal.

A cluster's processes are found through the process group of the ``ray start`` that made them, never through
``ray stop`` (which would stop every Ray instance on the machine, other people's included).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).parent / "ray")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def ray_env(base: dict[str, str] | None = None, *, multinode: bool = False) -> dict[str, str]:
    """The environment for Ray commands of a test cluster: token auth off; loopback-only single-node mode
    unless the cluster spans nodes (multi-node needs RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1; the nodes then live in
    namespaces whose only interfaces are the test's own)."""
    env = {
        **(os.environ if base is None else base),
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "1" if multinode else "0"
    env.pop("RAY_ADDRESS", None)
    return env


@dataclass(kw_only=True)
class RayNode:
    """One ``ray start`` (head or worker) and the process group of everything it started."""

    ip: str
    head: bool
    pgid: int
    prefix: list[str] = field(default_factory=list)
    """Command prefix that runs on this node (e.g. ``ip netns exec ns1``); empty: this machine."""

    def processes(self) -> list[psutil.Process]:
        out = []
        for p in psutil.process_iter(["pid"]):
            try:
                if os.getpgid(p.pid) == self.pgid:
                    out.append(p)
            except (ProcessLookupError, psutil.NoSuchProcess):
                pass
        return out

    def kill(self) -> None:
        """SIGKILL every process of this node (a lost node: no goodbye to the cluster)."""
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass(kw_only=True)
class RayCluster:
    """A Ray cluster started with ``ray start`` for a test; ``stop()`` removes every process it started."""

    address: str
    dashboard: str
    temp_dir: str
    env: dict[str, str]
    nodes: list[RayNode] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        *,
        ip: str = "127.0.0.1",
        num_cpus: int = 2,
        prefix: list[str] | None = None,
        multinode: bool = False,
        env: dict[str, str] | None = None,
    ) -> RayCluster:
        """``ray start --head`` on ``ip`` (GCS, dashboard and every listener there) with ``num_cpus``; its
        workers get ``env`` (default: this process's environment)."""
        temp = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # short: Ray's unix socket paths must fit 107 bytes
        port, dash = free_port(), free_port()
        env = ray_env(env, multinode=multinode)
        cluster = cls(address=f"{ip}:{port}", dashboard=f"http://{ip}:{dash}", temp_dir=temp, env=env)
        cluster.nodes.append(
            cluster._start(
                prefix or [],
                ip,
                [
                    "--head",
                    f"--port={port}",
                    "--include-dashboard=true",
                    f"--dashboard-host={ip}",
                    f"--dashboard-port={dash}",
                    f"--num-cpus={num_cpus}",
                    f"--temp-dir={temp}",
                ],  # fmt: skip
            )
        )
        return cluster

    def add_node(
        self, *, ip: str = "127.0.0.1", num_cpus: int = 1, prefix: list[str] | None = None
    ) -> RayNode:
        """``ray start --address`` on another node (a namespace) joining this cluster."""
        node = self._start(prefix or [], ip, [f"--address={self.address}", f"--num-cpus={num_cpus}"])
        self.nodes.append(node)
        return node

    def _start(self, prefix: list[str], ip: str, args: list[str]) -> RayNode:
        # start_new_session: `ray start` leads a new process group that everything it starts keeps (the
        # group id is its pid), so the node can be killed as one without touching other Ray instances.
        proc = subprocess.Popen(
            # the agent's HTTP port is Ray's fixed 52365 unless given: a second instance on the machine (a
            # private `ray.init`) would take it and leave this node with "No available agent to submit job"
            [
                *prefix,
                RAY,
                "start",
                f"--node-ip-address={ip}",
                "--disable-usage-stats",
                f"--dashboard-agent-listen-port={free_port()}",
                *args,
            ],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        out, err = proc.communicate(timeout=120)
        node = RayNode(ip=ip, head="--head" in args, pgid=proc.pid, prefix=prefix)
        if proc.returncode != 0:
            node.kill()
            raise RuntimeError(f"ray start {' '.join(args)} failed:\n{out[-2000:]}\n{err[-3000:]}")
        return node

    def alive_nodes(self) -> int:
        """Nodes the cluster counts as alive, from the dashboard's state API (no Ray client in this process)."""
        import json
        import urllib.request

        with urllib.request.urlopen(f"{self.dashboard}/api/v0/nodes?limit=100", timeout=10) as resp:
            nodes = json.load(resp)["data"]["result"]["result"]
        return sum(1 for n in nodes if n.get("state") == "ALIVE")

    def wait_for_nodes(self, n: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if self.alive_nodes() == n:
                    return
            except OSError:
                pass  # the dashboard is still starting
            time.sleep(1)
        raise TimeoutError(
            f"the Ray cluster at {self.address} did not reach {n} alive nodes in {timeout_s} s"
        )

    def wait_for_free_cpus(self, n: float, timeout_s: float = 120) -> None:
        """Until ``n`` CPUs are free (an earlier job's actors may hold theirs for a moment after it ends)."""
        prefix = self.nodes[0].prefix if self.nodes else []
        code = (
            "import ray, time\n"
            f"ray.init(address={self.address!r}, log_to_driver=False)\n"
            f"deadline = time.monotonic() + {timeout_s}\n"
            f"while ray.available_resources().get('CPU', 0) < {n}:\n"
            "    assert time.monotonic() < deadline, ray.available_resources()\n"
            "    time.sleep(0.5)\n"
        )
        proc = subprocess.run(
            [*prefix, sys.executable, "-c", code], env=self.env, capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise TimeoutError(f"{n} CPUs not free on {self.address}: {proc.stderr[-1000:]}")

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.kill()
        self.nodes.clear()
        import shutil

        shutil.rmtree(self.temp_dir, ignore_errors=True)
