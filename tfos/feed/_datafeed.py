"""DataFeed (node process): the node's end of the Spark feed, TensorFlowOnSpark's API plus fast paths."""

from __future__ import annotations

from typing import Any

import numpy as np

from tfos.errors import FeedDataError, TFOSError
from tfos.feed._columns import VAR_KINDS, Column, as_array, concat, result_column, rows_from_columns
from tfos.feed._hub import CLOSED, EPOCH_END, FeedQueue

#: as_dataset's generator hands TensorFlow this many batches per Python call; tf.data splits them.
BATCHES_PER_CALL = 8


class DataFeed:
    """Rows fed by ``Cluster.train`` / ``Cluster.inference``; get one with ``ctx.get_data_feed()``.

    TensorFlowOnSpark's methods (``next_batch``, ``should_stop``, ``batch_results``,
    ``terminate``) work unchanged; ``next_batch_arrays`` and ``as_dataset`` skip the
    per-row Python objects and are the fast paths.

    Binary and string fields arrive byte-exact, as fed: ``bytes`` (binary, also when fed
    as ``bytearray``) and ``str`` values in ``next_batch`` rows, object arrays of them in
    ``next_batch_arrays``, ``tf.string`` tensors (raw bytes, UTF-8 for text) in ``as_dataset``.
    """

    def __init__(self, hub: Any, queue: FeedQueue, qname_out: str = "output", train_mode: bool = True,
                 input_mapping: dict[str, str] | list[str] | None = None) -> None:
        self._hub = hub
        self._queue = queue
        self.qname_out = qname_out
        self.train_mode = train_mode
        self.input_mapping = input_mapping
        self._done = False

    # ---- TensorFlowOnSpark's API ----------------------------------------------------------
    def next_batch(self, batch_size: int) -> list[Any] | dict[str, Any]:
        """Up to ``batch_size`` rows as fed (tuples, arrays or values); fewer at the end of the feed.

        With ``input_mapping`` it returns ``{tensor_name: array of that column}`` instead.
        """
        columns = self.next_batch_arrays(batch_size)
        if columns is None:
            return {} if self.input_mapping else []
        if self.input_mapping:
            return self._mapped(columns)
        return rows_from_columns(columns, self._multi())

    def should_stop(self) -> bool:
        """True once the feed has ended (``shutdown``, ``terminate``) and nothing is left to read."""
        q = self._queue
        with q.cond:
            return self._done or ((q.closed or q.terminated) and not q.chunks and not q.replaying())

    def batch_results(self, results: Any) -> None:
        """Sends inference results back, one per input row, in the order rows were read.

        ``results`` is a sequence or array with one entry (number, bytes, str or array) per
        row; a tuple of arrays of equal length is taken as several output columns. bytes and
        str results (or object arrays of them, e.g. a ``tf.string`` tensor's ``.numpy()``)
        come back to Spark byte-exact.
        """
        columns = _result_columns(results)
        self._queue.answer(columns, len(columns[0]), self.qname_out)

    def terminate(self) -> None:
        """Stops the feed early: buffered and further rows of this queue are dropped.

        The driver's ``train()`` returns after the current epoch; rows are never
        re-sent to another node.
        """
        self._done = True
        self._hub.terminate(self._queue)

    # ---- fast paths ------------------------------------------------------------------------
    def next_batch_arrays(self, batch_size: int) -> list[np.ndarray] | None:
        """Up to ``batch_size`` rows as one numpy array per column; None at the end of the feed.

        Binary and string columns come as object arrays of ``bytes`` / ``str``.
        """
        if self._done:
            return None
        pieces, why = self._queue.take(batch_size, within_epoch=False)
        if not pieces:
            if why == CLOSED:
                self._done = True
            return None
        return _assemble(pieces)

    def as_dataset(self, batch_size: int, drop_remainder: bool = False, distributed: bool | None = None) -> Any:
        """A ``tf.data.Dataset`` of batches of ``batch_size`` rows; each pass over it reads one epoch of the feed.

        Elements are a tensor (single-column rows), a tuple of tensors (one per field,
        e.g. ``(features, label)`` for ``model.fit``) or, with ``input_mapping``, a dict.

        ``batch_size`` is per worker: under MultiWorkerMirroredStrategy (``model.fit``, or
        ``strategy.experimental_distribute_dataset``) each worker trains on ``batch_size``
        of its own rows a step, as on a single node. The dataset is built for the strategy
        when this process created a multi-worker strategy before calling ``as_dataset``
        (as MultiWorkerMirroredStrategy requires anyway); ``distributed`` overrides that
        guess: True for a dataset to hand to a strategy, False to iterate it yourself.

        When the driver balances epochs (``Cluster.train``'s default), every worker gets
        the same rows an epoch and the dataset's cardinality is the epoch's number of
        steps, so ``model.fit`` knows the epoch length (no ``steps_per_epoch``) and takes
        its fast path. Run as many passes (``fit`` epochs) as ``train`` feeds epochs.
        Without balance (streaming, ``balance=False``) the length is unknown and workers
        whose epoch has fewer rows finish together under tf.distribute's partial batches.
        """
        import tensorflow as tf

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise TFOSError(f"as_dataset(batch_size) needs a positive int; got {batch_size!r}")
        schema = self._queue.wait_schema()
        if schema is None:
            raise TFOSError(f"queue {self._queue.name!r} closed before any data arrived")
        specs = [tf.TensorSpec((None, *col["shape"][1:]),
                               tf.string if col["dtype"] in VAR_KINDS else tf.as_dtype(np.dtype(col["dtype"])))
                 for col in schema["cols"]]
        queue, mapped, epoch_rows = self._queue, self.input_mapping, self._queue.epoch_rows

        def element(pieces: list[tuple[Any, int, int]]) -> Any:
            columns = _assemble(pieces, schema, decode=False)
            return self._mapped(columns) if mapped else (tuple(columns) if len(columns) > 1 else columns[0])

        def batches():  # one epoch of unknown length: until the driver ends it
            while True:
                pieces, why = queue.take(batch_size * BATCHES_PER_CALL, within_epoch=True)
                if pieces:
                    yield element(pieces)
                if why in (EPOCH_END, CLOSED) and not (why == EPOCH_END and pieces):
                    return

        def balanced_batches():  # one epoch of exactly epoch_rows rows
            left = epoch_rows
            while left:
                pieces, why = queue.take(min(left, batch_size * BATCHES_PER_CALL), within_epoch=True)
                if pieces:
                    left -= sum(b - a for _, a, b in pieces)
                    if not left:
                        # before the last yield: TensorFlow may never ask this generator for more
                        queue.finish_epoch()
                    yield element(pieces)
                elif why == CLOSED or (why == EPOCH_END and left < epoch_rows):  # else: the last epoch's end
                    raise TFOSError(f"queue {queue.name!r}: the feed ended with {left} of this epoch's {epoch_rows} "
                                    "rows missing; run as many passes over the dataset (fit epochs) as "
                                    "Cluster.train feeds epochs")

        signature = self._mapped(specs) if mapped else (tuple(specs) if len(specs) > 1 else specs[0])
        dataset = tf.data.Dataset.from_generator(balanced_batches if epoch_rows else batches,
                                                 output_signature=signature)
        dataset = dataset.rebatch(batch_size, drop_remainder=drop_remainder)
        if epoch_rows:
            steps = epoch_rows // batch_size if drop_remainder else -(-epoch_rows // batch_size)
            dataset = dataset.apply(tf.data.experimental.assert_cardinality(steps))
        workers = _sync_workers() if distributed is None else (_cluster_workers() if distributed else 1)
        options = tf.data.Options()
        if workers > 1:
            # tf.distribute takes a batch for a global one and splits it among the workers in sync, each
            # training on its part: repeat a worker's batch once per worker and keep one copy per worker
            # (DATA sharding), so a step trains on batch_size of its own rows and the step count stays.
            dataset = dataset.map(lambda *xs: tf.nest.map_structure(
                lambda x: tf.tile(x, [workers] + [1] * (len(x.shape) - 1)), xs if len(xs) > 1 else xs[0]))
            options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        else:
            options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return dataset.with_options(options).prefetch(2)

    # ---- helpers ---------------------------------------------------------------------------------
    def _multi(self) -> bool:
        schema = self._queue.schema
        return bool(schema and schema.get("multi"))

    def _mapped(self, columns: list[Any]) -> dict[str, Any]:
        mapping = self.input_mapping
        names = (self._queue.schema or {}).get("names")
        if isinstance(mapping, dict):
            if names and all(col in names for col in mapping):
                return {tensor: columns[names.index(col)] for col, tensor in mapping.items()}
            return {mapping[col]: columns[i] for i, col in enumerate(sorted(mapping))}
        return dict(zip(mapping, columns))


def _assemble(pieces: list[tuple[Any, int, int]], schema: dict[str, Any] | None = None,
              decode: bool = True) -> list[np.ndarray]:
    """The rows of ``pieces`` as one array per column; binary / string columns as object arrays of
    bytes / str (bytes only, for TensorFlow, without ``decode``)."""
    width = len(pieces[0][0].columns)
    if len(pieces) == 1:
        chunk, a, b = pieces[0]
        # the type test keeps numeric columns on the fast path: a slice, no call
        columns = [c[a:b] if type(c) is np.ndarray else as_array(c[a:b], decode) for c in chunk.columns]
    else:
        columns = [as_array(concat([chunk.columns[j][a:b] for chunk, a, b in pieces]), decode) for j in range(width)]
    if schema is not None:
        # a later partition may carry other numeric dtypes than the first: TensorFlow wants the announced one
        columns = [c if spec["dtype"] in VAR_KINDS or c.dtype.str == spec["dtype"] else c.astype(spec["dtype"])
                   for c, spec in zip(columns, schema["cols"])]
    return columns


def _result_columns(results: Any) -> list[Column]:
    parts = list(results) if isinstance(results, tuple) and results and all(
        isinstance(r, np.ndarray) for r in results) else [results]
    try:
        columns = [result_column(p) for p in parts]
    except FeedDataError as exc:
        detail = str(exc).split(": ", 1)[-1]
        raise TFOSError(f"batch_results, result {getattr(exc, 'row', '?')}: {detail}; give one number, bytes, "
                        "str or equal-shaped array per input row") from None
    if any(isinstance(c, np.ndarray) and (c.dtype.hasobject or c.ndim == 0) for c in columns):
        raise TFOSError("batch_results needs numbers, bytes, strings or equal-shaped arrays, one per input row")
    if any(len(c) != len(columns[0]) for c in columns):
        raise TFOSError("batch_results columns differ in length")
    return columns


def _sync_workers() -> int:
    """Workers training in sync under the multi-worker strategy this process created, else 1."""
    import tensorflow as tf

    if tf.distribute.has_strategy():
        return int(getattr(tf.distribute.get_strategy().extended, "_num_workers", 1))
    from tensorflow.python.eager import context

    # a MultiWorkerMirroredStrategy enables collective ops for its cluster when it is created
    server_def = getattr(context.context(), "_collective_ops_server_def", None)
    if server_def is None:
        return 1
    return _cluster_workers()


def _cluster_workers() -> int:
    """The chief and workers in this node's TF_CONFIG: MultiWorkerMirroredStrategy's workers."""
    import json
    import os

    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    return max(1, len(cluster.get("chief", [])) + len(cluster.get("worker", [])))
