"""Tunables and their defaults (driver and executors).

Every knob is a ``TFOS_*`` environment variable read when it is used, so a value set
in ``spark.executorEnv.TFOS_...`` reaches the executors and one set in the driver's
environment reaches the driver.
"""

from __future__ import annotations

import os

from tfos.errors import TFOSConfigError

#: Seconds a long-poll RPC is held by the driver before answering "nothing new".
POLL_HOLD_SECS = "TFOS_POLL_HOLD_SECS", 2.0
#: Seconds a node keeps running after it last reached the driver.
ORPHAN_TIMEOUT_SECS = "TFOS_ORPHAN_TIMEOUT_SECS", 30.0
#: Seconds without a heartbeat (a node's poll) after which the driver declares the node failed.
HEARTBEAT_TIMEOUT_SECS = "TFOS_HEARTBEAT_TIMEOUT_SECS", 6.0
#: Host the driver's control server binds and advertises (default: Spark's driver host).
SERVER_HOST = "TFOS_SERVER_HOST", ""
#: Port or port range ("9000-9100") for the driver's control server; 0 picks any.
SERVER_PORT = "TFOS_SERVER_PORT", "0"
#: Port or port range for TensorBoard on the chief; 0 picks any.
TENSORBOARD_PORT = "TFOS_TENSORBOARD_PORT", "0"
#: Port or port range of each node's TensorFlow server (the TF_CONFIG address peers connect to); 0 picks any.
NODE_PORT = "TFOS_NODE_PORT", "0"
#: Port or port range where each fed node takes feeding tasks of other executors; 0 picks any.
FEED_PORT = "TFOS_FEED_PORT", "0"
#: Bytes of fed data a node buffers per queue before the feeders wait (back-pressure).
FEED_BUFFER_BYTES = "TFOS_FEED_BUFFER_BYTES", 64 << 20
#: Seconds between two progress log lines per node when stderr is not a terminal.
PROGRESS_INTERVAL_SECS = "TFOS_PROGRESS_INTERVAL_SECS", 10.0
#: Port or port range where the driver serves Prometheus metrics; unset or empty: not served.
METRICS_PORT = "TFOS_METRICS_PORT", ""
#: Host the Prometheus endpoint binds (driver; default: the address nodes reach the driver at).
METRICS_HOST = "TFOS_METRICS_HOST", ""
#: Address a node binds its feed and TensorBoard ports on and advertises to its peers (executors;
#: default: the address of the interface it reaches the driver through).
NODE_HOST = "TFOS_NODE_HOST", ""
#: "0" sends cross-executor feeds as plain TCP (still authenticated, not encrypted), e.g. for a benchmark.
FEED_TLS = "TFOS_FEED_TLS", "1"
#: Target size in bytes of one chunk of rows sent from a Spark task to a node.
FEED_CHUNK_BYTES = "TFOS_FEED_CHUNK_BYTES", 1 << 20
#: Seconds a node waits for a new feed connection's hello (its secret) before dropping it.
FEED_HELLO_TIMEOUT_SECS = "TFOS_FEED_HELLO_TIMEOUT_SECS", 10.0
#: Bytes of its epoch cache a node keeps in memory; the rest is memory-mapped from local disk.
FEED_CACHE_BYTES = "TFOS_FEED_CACHE_BYTES", 1 << 30
#: Local directory where nodes spill their epoch caches (default: $TMPDIR, else /tmp).
FEED_CACHE_DIR = "TFOS_FEED_CACHE_DIR", ""
#: Seconds between two samples of each node's memory and rows/s logged to MLflow (driver, ``tfos.run(mlflow=...)``).
MLFLOW_SYSTEM_SECS = "TFOS_MLFLOW_SYSTEM_SECS", 5.0


def get_str(setting: tuple[str, str]) -> str:
    name, default = setting
    return os.environ.get(name, default)


def get_float(setting: tuple[str, float]) -> float:
    name, default = setting
    raw = os.environ.get(name)
    if raw is None:
        return float(default)
    try:
        value = float(raw)
    except ValueError:
        raise TFOSConfigError(f"{name}={raw!r} is not a number; unset it or set a number of seconds") from None
    if value <= 0:
        raise TFOSConfigError(f"{name}={raw!r} must be positive")
    return value


def get_int(setting: tuple[str, int]) -> int:
    return int(get_float(setting))


def port_range(setting: tuple[str, str]) -> range:
    """Parses a ``TFOS_*_PORT`` value: ``0`` (any free port), ``9000`` or ``9000-9100``."""
    name, _ = setting
    raw = get_str(setting).strip()
    try:
        low, _, high = raw.partition("-")
        first, last = int(low), int(high or low)
    except ValueError:
        raise TFOSConfigError(f"{name}={raw!r} is not a port or a range like 9000-9100") from None
    if not (0 <= first <= last <= 65535) or (first == 0 and last != 0):
        raise TFOSConfigError(f"{name}={raw!r} must be 0 or a range of ports within 1-65535")
    return range(first, last + 1)
