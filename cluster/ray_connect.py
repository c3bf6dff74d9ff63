"""Joining a Ray cluster, or starting a private Ray instance: the one place dnafm does either.

Every command that uses Ray (``prepare``, ``pretrain --launcher ray``, ``eval --launcher ray``) connects
through :func:`connect`:

- an address (``--ray-address``, or ``RAY_ADDRESS`` in the environment; ``auto`` finds a cluster started on
  this machine with ``ray start``) joins that cluster;
- no address starts a private instance for this command only (``ray.init(address="local")``), on loopback,
  with the CPUs asked for, even when a cluster is already running on the machine: plain ``ray.init(num_cpus=N)``
  would find that cluster and stop with Ray's "When connecting to an existing cluster, num_cpus and num_gpus
  must not be provided".

Either way one log line says which. A private instance listens on 127.0.0.1 only, with token authentication
off and no dashboard; the user's environment wins where it sets ``RAY_AUTH_MODE`` or
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``.
"""

from __future__ import annotations

import logging
import os
import sys

from datapipe.common.errors import UsageError

log = logging.getLogger(__name__)

# Keep a private instance on loopback and without token auth: otherwise Ray 2.5x may listen on external
# interfaces, and turns token auth on once an earlier local ray.init wrote ~/.ray/auth_token.
PRIVATE_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def connect(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    log_to_driver: bool = False,
) -> str:
    """Join the cluster at ``address`` (else ``$RAY_ADDRESS``), or start a private instance with ``num_cpus``
    CPUs; returns a sentence saying which (also logged). A no-op when this process is connected already.
    ``log_to_driver``: stream the workers' output to this process (Ray prefixes each line with the worker)."""
    if (
        log_to_driver
    ):  # every rank's lines, not Ray's "[repeated 7x across cluster]" summaries (read on import)
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    address = address or os.environ.get("RAY_ADDRESS")
    loopback_mode(address)
    import ray

    if ray.is_initialized():
        return "connected to Ray already"
    if address:
        _reachable_or_fail(address)
        try:
            ray.init(address=address, log_to_driver=log_to_driver, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise UsageError(
                f"cannot join the Ray cluster at {address!r} ({str(err).splitlines()[0]}); start one with "
                "`ray start --head`, check the address and port, or drop --ray-address (and RAY_ADDRESS) to "
                "run on a private instance on this machine"
            ) from None
        res = ray.cluster_resources()
        alive = sum(1 for n in ray.nodes() if n.get("Alive"))
        what = f"joined the Ray cluster at {address}: {alive} node(s), {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs"
    else:
        for key, value in PRIVATE_ENV.items():
            os.environ.setdefault(key, value)
        ray.init(
            address="local",
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            include_dashboard=False,
            log_to_driver=log_to_driver,
            _node_ip_address="127.0.0.1",
            configure_logging=False,
        )
        what = (
            f"started a private Ray instance on 127.0.0.1 with {ray.cluster_resources().get('CPU', 0):g} CPUs "
            "(to use a running cluster instead: --ray-address auto, or set RAY_ADDRESS)"
        )
    log.info("%s", what)
    return what


LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def loopback_mode(address: str | None) -> None:
    """For a head on loopback (a one-machine cluster), Ray's loopback mode, which Ray reads when it is
    imported: without it Ray rewrites this driver's 127.0.0.1 to the machine's address, where that head does
    not listen, and waits for its GCS forever without a word. ``dnafm`` calls this before anything imports
    Ray; a library caller that imported Ray already gets a UsageError instead of the hang."""
    if not address or address.removeprefix("ray://").rpartition(":")[0] not in LOOPBACK:
        return
    if _LOOPBACK_ENV in os.environ:
        return  # the user's own choice
    if "ray" in sys.modules:
        raise UsageError(
            f"the Ray head at {address!r} listens on loopback, which needs {_LOOPBACK_ENV}=0 in the "
            "environment before Ray is imported: set it, or give the head's non-loopback address"
        )
    os.environ[_LOOPBACK_ENV] = "0"


def _reachable_or_fail(address: str, timeout_s: float = 5.0) -> None:
    """A ``host:port`` that does not answer fails here in seconds: ray.init itself retries for minutes."""
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or address in ("auto", "local"):
        return  # 'auto', a URL ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise UsageError(
            f"cannot join the Ray cluster at {address!r} (nothing answers there: {err}); start one with "
            "`ray start --head`, check the address and that the port is open, or drop --ray-address (and "
            "RAY_ADDRESS) to run on a private instance on this machine"
        ) from None


def disconnect() -> None:
    """Leave the cluster (a private instance stops with it)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
