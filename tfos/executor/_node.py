"""The node process (executor): runs ``main_fun(args, ctx)`` with TF_CONFIG set.

Started by ``NodeLauncher`` as ``python -m tfos.executor._node`` in a session of its
own, it reads its ``NodePayload`` from stdin (a local pipe from its parent), starts
TensorBoard on the chief when asked, serves the data feed in InputMode.SPARK, and
long-polls its mailbox on the driver for events. It reports how ``main_fun`` ended
and exits when told to stop, or when the driver has been unreachable for
``TFOS_ORPHAN_TIMEOUT_SECS`` so that no node outlives its driver.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from typing import Any

from tfos import _constants as C
from tfos._paths import local_marker_path, local_path, log_path, unix_socket_path
from tfos._protocol import Event, NodeState
from tfos._rpc import NodeClient
from tfos.errors import TFOSConfigError, TFOSError
from tfos.executor._bootstrap import NodePayload
from tfos.executor._child import start_child
from tfos.executor._context import NodeContext
from tfos.executor._logs import LogShipper

log = logging.getLogger("tfos.node")

#: Seconds between two metric reports sent right away by ``ctx.report`` (polls carry the rest).
METRICS_INTERVAL_SECS = 0.5
#: Jobs that serve until the driver stops them, whatever main_fun does.
SERVING_JOBS = ("ps", "evaluator")


class Node:
    """One TensorFlow node; see the module docstring."""

    def __init__(self, payload: NodePayload) -> None:
        self.p = payload
        self.name = f"{payload.job_name}:{payload.task_index}"
        self.client = NodeClient.connect(payload.server_address, payload.credential)
        self.sockets = {name: socket.socket(fileno=fd) for name, fd in payload.fds.items()}
        self.tensorboard: subprocess.Popen | None = None
        self.feeds: Any = None
        self._exit_lock = threading.Lock()
        self._main_running = False
        self.metrics: dict[str, float | str] = {}
        self._metrics_sent = 0.0
        self.logs = LogShipper(self.client, payload.executor_id, log_path(payload.job_name, payload.task_index),
                               payload.log_offset)

    def run(self) -> None:
        p = self.p
        self.logs.start()
        if p.executor_pid:
            threading.Thread(target=self._watch_executor, args=(p.executor_pid,), name="tfos-executor-watch",
                             daemon=True).start()
        if "feed_unix" in self.sockets:
            from tfos.feed._hub import FeedHub

            self.feeds = FeedHub(self, [self.sockets.pop("feed_unix"), self.sockets.pop("feed_tcp")])
            self.feeds.start()
        ctx = NodeContext(executor_id=p.executor_id, job_name=p.job_name, task_index=p.task_index,
                          cluster_spec=p.cluster_spec, cluster_info=p.cluster_info, default_fs=p.default_fs,
                          working_dir=os.getcwd(), port_socket=self.sockets.pop("port"), feeds=self.feeds,
                          on_serving=lambda: self.report(NodeState.SERVING), on_report=self.report_metrics)
        if "tb" in self.sockets:
            self._start_tensorboard(ctx)
        threading.Thread(target=self._poll_loop, name="tfos-poll", daemon=True).start()
        if p.release_port:
            ctx.release_port()
        self._main_running = True
        self.report(NodeState.RUNNING)
        try:
            import cloudpickle

            main_fun, args = cloudpickle.loads(p.main)
            log.info("starting main_fun on %s (executor %d)", self.name, p.executor_id)
            main_fun(args, ctx)
        except SystemExit as exc:
            if exc.code not in (None, 0):
                self._fail(exc)
        except BaseException as exc:  # noqa: BLE001 - the driver gets every failure
            self._fail(exc)
        self._main_running = False
        if p.job_name in SERVING_JOBS:
            log.info("main_fun returned on %s; serving until the driver stops the cluster", self.name)
            threading.Event().wait()
        self.report(NodeState.FINISHED)
        self.exit(0)

    def _fail(self, exc: BaseException) -> None:
        log.error("main_fun failed on %s", self.name, exc_info=exc)
        self.report(NodeState.FAILED, message=f"{type(exc).__name__}: {exc}",
                    traceback="".join(traceback.format_exception(exc)))
        self.exit(1)

    def _watch_executor(self, pid: int) -> None:
        """Ends the node when the Spark executor hosting it is gone (killed, lost, app stopped)."""
        import psutil

        try:
            executor = psutil.Process(pid)
            while executor.is_running() and executor.status() != psutil.STATUS_ZOMBIE:
                time.sleep(0.5)
        except psutil.Error:
            pass
        log.error("the Spark executor (pid %d) hosting %s is gone; the node exits", pid, self.name)
        self.report(NodeState.FAILED, lost=True, traceback="",
                    message=f"the Spark executor (pid {pid}) hosting {self.name} exited: executor lost")
        self.exit(1)

    def report(self, state: NodeState, **fields: Any) -> None:
        try:
            self.client.report(self.p.executor_id, state, timeout=10, stats=self.stats(), **fields)
        except TFOSError:
            log.warning("could not report state %r to the driver", str(state), exc_info=True)

    def stats(self) -> dict[str, Any]:
        """What the driver shows for this node: rows consumed per queue, reported metrics, memory, GPUs."""
        import psutil

        stats = self.feeds.stats() if self.feeds is not None else {}
        try:
            stats["rss"] = psutil.Process().memory_info().rss
        except psutil.Error:
            pass
        stats["pid"] = os.getpid()
        stats["gpus"] = os.environ.get("CUDA_VISIBLE_DEVICES")
        stats["metrics"] = dict(self.metrics)
        return stats

    def report_metrics(self, metrics: dict[str, Any]) -> None:
        """``ctx.report``: keeps the latest value of each metric; sends them at most twice a second.

        The next poll carries whatever a throttled call did not send, so nothing is lost.
        """
        self.metrics.update(metric_values(metrics))
        now = time.monotonic()
        if now - self._metrics_sent >= METRICS_INTERVAL_SECS:
            self._metrics_sent = now
            try:
                self.client.metrics(self.p.executor_id, self.stats(), timeout=5)
            except TFOSError:
                log.debug("could not send metrics to the driver", exc_info=True)

    def exit(self, code: int) -> None:
        """Cleans up, tells the driver, and ends the process (TF threads never block it)."""
        with self._exit_lock:
            if self.feeds is not None:
                self.feeds.close()
                for path in (unix_socket_path(self.p.cluster_id, self.p.executor_id),
                             local_marker_path(self.p.cluster_id)):
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
            if self.tensorboard is not None:
                self.tensorboard.terminate()
                try:
                    self.tensorboard.wait(5)
                except subprocess.TimeoutExpired:
                    self.tensorboard.kill()
            log.info("%s exits with code %d", self.name, code)
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            self.logs.flush()
            self.report(NodeState.EXITED)
            os._exit(code)

    def _poll_loop(self) -> None:
        seq, last_contact = 0, time.monotonic()
        orphan_after = C.get_float(C.ORPHAN_TIMEOUT_SECS)
        while True:
            try:
                reply = self.client.poll(self.p.executor_id, seq, self.stats(),
                                         timeout=C.get_float(C.POLL_HOLD_SECS) + 10)
            except TFOSError as exc:
                if time.monotonic() - last_contact > orphan_after:
                    log.error("driver unreachable for %.0fs (%s); %s exits", orphan_after, exc, self.name)
                    self.exit(3)
                time.sleep(min(1.0, orphan_after / 10))
                continue
            last_contact = time.monotonic()
            seq = reply["seq"]
            for event in reply["events"]:
                self._handle(event)

    def _handle(self, event: dict[str, Any]) -> None:
        if event["type"] == Event.STOP:
            if self._main_running and self.p.job_name not in SERVING_JOBS:
                log.warning("%s stopped by the driver while main_fun runs: %s", self.name, event.get("reason"))
            self.exit(0)
        elif self.feeds is not None:
            self.feeds.handle(event)

    def _start_tensorboard(self, ctx: NodeContext) -> None:
        logdir = local_path(ctx.absolute_path(self.p.log_dir or "tensorboard"))
        if "://" not in logdir:
            os.makedirs(logdir, exist_ok=True)
        tb_socket = self.sockets.pop("tb")
        host, port = tb_socket.getsockname()[:2]  # the node's cluster-facing address (TFOS_NODE_HOST)
        tb_socket.close()
        self.tensorboard = start_child(
            [sys.executable, "-m", "tensorboard.main", "--logdir", logdir, "--port", str(port), "--host", host],
            stdout=sys.stdout, stderr=subprocess.STDOUT,
        )
        log.info("TensorBoard on port %d serving %s", port, logdir)


def metric_values(metrics: dict[str, Any]) -> dict[str, float | str]:
    """Plain numbers (or short strings) for ``ctx.report(**metrics)``; numpy and TF scalars welcome."""
    values: dict[str, float | str] = {}
    for name, value in metrics.items():
        if isinstance(value, str):
            values[name] = value[:200]
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise TFOSConfigError(f"ctx.report({name}=...): got {type(value).__name__}; report numbers (int, "
                                  "float, numpy or TensorFlow scalars) or short strings") from None
        values[name] = int(number) if isinstance(value, (bool, int)) else number
    return values


def main() -> None:
    payload: NodePayload = pickle.load(sys.stdin.buffer)  # local pipe from our parent task
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format=f"%(asctime)s {payload.job_name}:{payload.task_index} %(levelname)s %(name)s: %(message)s",
    )
    signal.signal(signal.SIGTERM, lambda *_: Node.exit(node, 143))
    node = Node(payload)
    node.run()


if __name__ == "__main__":
    main()
