"""The map stage of ``grdr-index build`` on Ray Data.

Units of files become rows of a Ray dataset, one unit per block, and an actor pool maps
them: each actor loads the encoder once, keeps one decoder pool and runs
``grdr_core.stages.UnitEncoder`` on the units it gets, writing them to the work
directory. Rows carry units (file paths and ids) and per-status counts, never frames.
Planning, merging, semantic IDs and publishing run in the driver, as with every engine.

``grdr-index build INPUT --out OUT --engine ray`` starts a local Ray instance;
``--ray-address ADDR`` joins a running cluster (``auto``, or ``ray://host:10001``). On a
cluster, submit the build as a job (``ray job submit --working-dir . -- grdr-index build
... --engine ray --ray-address auto``) and put ``--work-dir`` on storage that every node
can read.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from grdr_core.errors import BuildIncompleteError
from grdr_core.stages import MapSettings, UnitEncoder, WorkUnit

logger = logging.getLogger(__name__)

# Rows are small (a unit's paths), so blocks are small too. One unit per block lets the
# actors share the work evenly.
TARGET_MAX_BLOCK_BYTES = 1 << 20
# ray.init keeps retrying an address where nothing listens, so a build checks the address first.
CONNECT_TIMEOUT_S = 10.0


class _UnitActor:
    """A Ray Data actor: loads the encoder once and processes the units it is given."""

    def __init__(self, settings: MapSettings) -> None:
        self._unit_encoder = UnitEncoder(settings)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        units: list[WorkUnit] = [pickle.loads(blob) for blob in batch["unit"]]
        results = list(self._unit_encoder.run(units))
        return {
            "number": [result.number for result in results],
            "counts": [pickle.dumps(result.status_counts) for result in results],
        }


def ray_map_runner(address: str | None = None, actors: int | None = None):
    """Return a map runner for ``grdr_core.build.build_index`` that runs on Ray Data.

    ``address`` None starts a local Ray instance on 127.0.0.1 (stopped again afterwards);
    ``actors`` is the size of the encoder actor pool (default: the cluster's CPUs).
    """

    def run_units(settings: MapSettings, units: list[WorkUnit]) -> None:
        # Ray's usage statistics would be sent to an outside server; a build never sends them.
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if address is not None:
            check_reachable(address)
        import ray

        started_here = not ray.is_initialized()
        if started_here:
            if address is None:
                ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
            else:
                try:
                    ray.init(address=address, log_to_driver=False)
                except ConnectionError as exc:
                    raise BuildIncompleteError(
                        f"Failed to connect to a Ray cluster at --ray-address {address} ({str(exc).rstrip('.')}); "
                        "start one or fix --ray-address, then run the same command again to resume"
                    ) from exc
        try:
            _map_units(ray, settings, units, actors)
        finally:
            if started_here:
                ray.shutdown()

    return run_units


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Raise ``BuildIncompleteError`` when ``address`` (host:port or ray://host:port) does not accept connections.

    ``auto`` and ``local`` are left to Ray, which fails at once when it finds no cluster.
    NOTE: only a TCP connection is tried, so a port where some other server listens
    passes, and ray.init then retries without a time limit.
    """
    if address in ("auto", "local"):
        return
    parts = urlsplit(address if "://" in address else f"gcs://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or port is None:
        raise BuildIncompleteError(f"--ray-address {address!r} is not auto, HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise BuildIncompleteError(
            f"Failed to connect to a Ray cluster at {address} ({exc.strerror or exc}); start it or fix --ray-address, "
            "then run the same command again to resume"
        ) from exc


def _map_units(ray: Any, settings: MapSettings, units: list[WorkUnit], actors: int | None) -> None:
    context = ray.data.DataContext.get_current()
    context.target_max_block_size = TARGET_MAX_BLOCK_BYTES
    context.enable_progress_bars = False
    pool_size = actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
    pool_size = min(pool_size, len(units))
    logger.info("Running the map stage of %d units on Ray with %d encoder actors", len(units), pool_size)

    dataset = ray.data.from_items([{"unit": pickle.dumps(unit)} for unit in units], override_num_blocks=len(units))
    dataset = dataset.map_batches(
        _UnitActor,
        fn_constructor_args=(settings,),
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=pool_size),
        num_cpus=1,
    )
    totals: Counter[str] = Counter()
    finished = 0
    for row in dataset.iter_rows():
        totals.update(pickle.loads(row["counts"]))
        finished += 1
    logger.info("Ray finished %d units: %s", finished, ", ".join(f"{k}={v}" for k, v in sorted(totals.items())))
