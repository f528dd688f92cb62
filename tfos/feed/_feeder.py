"""Feeding tasks (executors, inside Spark tasks): send a partition to a node in chunks.

``Feeder`` is the ``mapPartitionsWithIndex`` function of a feeding job. It connects to
the node on its own executor through a Unix socket (or, when that executor hosts no
fed node, to a chief/worker over TCP), packs rows into column chunks of about
``TFOS_FEED_CHUNK_BYTES`` and streams them. In training it yields the number of rows
the node acknowledged; in inference it yields the node's results, one per row, while
a second thread keeps sending.
"""

from __future__ import annotations

import itertools
import json
import logging
import select
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from tfos import _constants as C
from tfos.errors import AuthError, FeedTimeoutError, TFOSError
from tfos.executor._bootstrap import local_marker_path, unix_socket_path
from tfos.feed._columns import is_multi_field, pack
from tfos.feed._protocol import column_spec, recv_frame, send_frame, widen_buffers

log = logging.getLogger(__name__)

MAX_CHUNK_ROWS = 1 << 16


@dataclass(frozen=True)
class Consumer:
    executor_id: int
    role: str
    host: str
    feed_port: int


@dataclass(frozen=True)
class Feeder:
    """See the module docstring. Holds only plain data: Spark pickles it to every task."""

    cluster_id: str
    secret: str
    server_address: str
    qname: str
    epoch: int | None
    consumers: tuple[Consumer, ...]
    feed_timeout: float
    local_mode: bool
    arrow: bool

    @property
    def inference(self) -> bool:
        return self.epoch is None

    def __call__(self, partition: int, rows: Iterator[Any]) -> Iterator[Any]:
        consumer, sock = self._connect(partition)
        try:
            if self.inference:
                yield from self._infer(sock, consumer, partition, rows)
            else:
                yield self._train(sock, consumer, partition, rows)
        except TimeoutError:
            error = FeedTimeoutError(
                f"node {consumer.role} (executor_id {consumer.executor_id}, host {consumer.host}) took no data "
                f"from partition {partition} of queue {self.qname!r} for feed_timeout={self.feed_timeout}s. "
                "Its main_fun stopped reading the feed (finished early, stuck, or reads another queue); "
                "raise feed_timeout if it is just slow.", node=consumer.role, partition=partition)
            self._report("timeout", str(error), partition)
            raise error from None
        except TFOSError as error:
            self._report(type(error).__name__, str(error), partition)
            raise
        finally:
            sock.close()

    # ---- connection ----------------------------------------------------------------------
    def _connect(self, partition: int) -> tuple[Consumer, socket.socket]:
        local = None if self.local_mode else _local_executor(self.cluster_id)
        by_id = {c.executor_id: c for c in self.consumers}
        if local in by_id:
            consumer = by_id[local]
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: Any = unix_socket_path(self.cluster_id, consumer.executor_id)
        else:
            consumer = self.consumers[partition % len(self.consumers)]
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            address = (consumer.host, consumer.feed_port)
        sock.settimeout(self.feed_timeout)
        widen_buffers(sock)
        try:
            sock.connect(address)
            send_frame(sock, {"op": "hello", "secret": self.secret, "qname": self.qname, "epoch": self.epoch,
                              "inference": self.inference, "partition": partition})
            reply = recv_frame(sock)
        except OSError as exc:
            sock.close()
            raise TFOSError(f"cannot reach the feed of node {consumer.role} at {address}: {exc}. The node has "
                            "exited (see the driver's error) or the cluster was shut down.") from exc
        if reply is None or reply[0].get("op") != "ready":
            sock.close()
            raise AuthError(f"node {consumer.role} refused the feed: {reply[0] if reply else 'closed'}")
        return consumer, sock

    # ---- training ---------------------------------------------------------------------------
    def _train(self, sock: socket.socket, consumer: Consumer, partition: int, rows: Iterator[Any]) -> int:
        reply = None
        for columns, schema in self._chunks(partition, rows):
            if select.select([sock], [], [], 0)[0]:  # the node only speaks early to refuse data
                reply = _expect(recv_frame(sock), consumer)
                break
            send_frame(sock, {"op": "data", "schema": schema}, columns)
        send_frame(sock, {"op": "end"})
        reply = reply or _expect(recv_frame(sock), consumer)
        return 0 if reply["op"] == "terminated" else int(reply["rows"])

    # ---- inference --------------------------------------------------------------------------
    def _infer(self, sock: socket.socket, consumer: Consumer, partition: int, rows: Iterator[Any]) -> Iterator[Any]:
        failure: list[BaseException] = []

        def send_all() -> None:
            try:
                for columns, schema in self._chunks(partition, rows):
                    send_frame(sock, {"op": "data", "schema": schema}, columns)
                send_frame(sock, {"op": "end"})
            except BaseException as exc:  # noqa: BLE001 - re-raised by the reading side
                failure.append(exc)
                sock.shutdown(socket.SHUT_RDWR)

        sender = threading.Thread(target=send_all, name="tfos-feed-send", daemon=True)
        sender.start()
        while True:
            try:
                frame = recv_frame(sock)
            except OSError:
                if failure:
                    raise failure[0] from None
                raise
            if failure:
                raise failure[0]
            header = _expect(frame, consumer)
            if header["op"] == "done":
                break
            if header["op"] == "terminated":
                raise TFOSError(f"node {consumer.role} terminated queue {self.qname!r} during inference; "
                                f"partition {partition} got only some of its results")
            yield from result_rows(frame[1])
        sender.join()

    # ---- shared ------------------------------------------------------------------------------
    def _chunks(self, partition: int, rows: Iterator[Any]) -> Iterator[tuple[list[np.ndarray], dict[str, Any]]]:
        if self.arrow:
            yield from _arrow_chunks(partition, rows)
            return
        rows = iter(rows)
        first = next(rows, None)
        if first is None:
            return
        multi = is_multi_field(first)
        row_bytes = sum(np.asarray(f).nbytes for f in (first if multi else [first])) or 1
        per_chunk = max(1, min(MAX_CHUNK_ROWS, C.get_int(C.FEED_CHUNK_BYTES) // row_bytes))
        offset, expected, schema = 0, None, None
        batch = [first, *itertools.islice(rows, per_chunk - 1)]
        while batch:
            columns = pack(batch, partition, offset, multi, expected)
            if schema is None:
                expected = [column_spec(c) for c in columns]
                schema = {"multi": multi, "names": None, "cols": expected}
            yield columns, schema
            offset += len(batch)
            batch = list(itertools.islice(rows, per_chunk))

    def _report(self, kind: str, message: str, partition: int) -> None:
        from tfos._rpc import ControlClient

        client = ControlClient(self.server_address, self.secret)
        try:
            client.call("FeedError", {"kind": kind, "message": message, "qname": self.qname,
                                      "partition": partition}, timeout=10)
        except TFOSError:
            log.warning("could not report a feed error to the driver", exc_info=True)
        finally:
            client.close()


def _local_executor(cluster_id: str) -> int | None:
    try:
        with open(local_marker_path(cluster_id)) as f:
            return int(json.load(f)["executor_id"])
    except (OSError, ValueError, KeyError):
        return None


def _expect(frame: tuple[dict[str, Any], list[np.ndarray]] | None, consumer: Consumer) -> dict[str, Any]:
    if frame is None:
        raise TFOSError(f"node {consumer.role} (executor_id {consumer.executor_id}) closed the feed: its main_fun "
                        "failed or the node exited; the driver reports the node's error")
    header = frame[0]
    if header.get("op") == "error":
        raise TFOSError(f"node {consumer.role}: {header.get('message')}")
    return header


def result_rows(columns: list[np.ndarray]) -> Iterator[Any]:
    """Inference results as rows: values for one column, tuples for several."""
    values = [c.tolist() if c.ndim == 1 else list(c) for c in columns]
    if len(values) == 1:
        return iter(values[0])
    return zip(*values)


def _arrow_chunks(partition: int, blobs: Iterator[bytes]) -> Iterator[tuple[list[np.ndarray], dict[str, Any]]]:
    """Column chunks from Arrow IPC streams (one per Arrow batch of a DataFrame partition)."""
    import pyarrow as pa

    offset = 0
    for blob in blobs:
        with pa.ipc.open_stream(blob) as reader:
            for batch in reader:
                if batch.num_rows == 0:
                    continue
                names = batch.schema.names
                columns = [_arrow_column(batch.column(i), names[i], partition, offset) for i in range(len(names))]
                schema = {"multi": True, "names": names, "cols": [column_spec(c) for c in columns]}
                step = max(1, C.get_int(C.FEED_CHUNK_BYTES) // max(1, sum(c[:1].nbytes for c in columns)))
                for start in range(0, batch.num_rows, step):
                    yield [c[start:start + step] for c in columns], schema
                offset += batch.num_rows


def _arrow_column(column: Any, name: str, partition: int, offset: int) -> np.ndarray:
    import pyarrow as pa

    from tfos.errors import FeedDataError

    if column.null_count:
        row = offset + column.is_null().to_pylist().index(True)
        raise FeedDataError(f"partition {partition} row {row}: column {name!r} is null; fill or drop nulls first",
                            partition=partition, row=row)
    kind = column.type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        lengths = np.asarray(column.value_lengths())
        if len(lengths) and (lengths != lengths[0]).any():
            bad = int(np.argmax(lengths != lengths[0]))
            raise FeedDataError(f"partition {partition} row {offset + bad}: column {name!r} has {lengths[bad]} "
                                f"values, the batch has {lengths[0]}", partition=partition, row=offset + bad)
        flat = _arrow_column(column.flatten(), name, partition, offset)
        width = int(lengths[0]) if len(lengths) else 0
        return flat.reshape((len(column), width) + flat.shape[1:])
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return np.asarray(column.to_pylist(), dtype=str)
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return np.asarray(column.to_pylist(), dtype=bytes)
    return column.to_numpy(zero_copy_only=False)


def vectors_as_arrays(df: Any) -> Any:
    """``df`` with its Spark ML vector columns turned into float64 arrays, which Arrow carries."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.ml.linalg import VectorUDT

    vectors = {f.name for f in df.schema.fields if isinstance(f.dataType, VectorUDT)}
    if not vectors:
        return df
    return df.select([vector_to_array(df[c]).alias(c) if c in vectors else df[c] for c in df.columns])


def dataframe_to_arrow_rdd(df: Any) -> Any:
    """An RDD of Arrow IPC streams, one per Arrow batch of ``df``: no per-row Python work."""

    def to_ipc(batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa

        for batch in batches:
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, batch.schema) as writer:
                writer.write_batch(batch)
            yield pa.RecordBatch.from_pydict({"ipc": [sink.getvalue().to_pybytes()]})

    return vectors_as_arrays(df).mapInArrow(to_ipc, "ipc binary").rdd.map(lambda row: row[0])


