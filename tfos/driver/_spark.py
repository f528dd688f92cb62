"""Every Spark call the driver makes (driver), behind one small interface with two backends.

:func:`backend` picks one from what the user passed: :class:`Classic` for a SparkContext or
a classic SparkSession, :class:`Connect` for a Spark Connect session (no SparkContext, no
RDD: nodes start as one ``mapInArrow`` job, jobs are cancelled by tag). The rest of tfos
(the driver, ``tfos.ml``, the CLI) talks to Spark only through a :class:`Spark` backend:
preflight, hosts, labelled and cancellable jobs, node tasks, feeding and counting jobs,
files. ``tfos.compat.TFParallel`` alone takes TensorFlowOnSpark's SparkContext as it is.

Jobs tfos starts carry a group (classic job group, Connect job tag) for cancellation and a
description a person can read in the Spark UI, e.g. "tfos nodes: chief + 2 workers".
DataFrames are fed the same way on both backends: one ``mapInArrow`` job whose tasks get
Arrow record batches, and rows are counted per partition without moving the data to Python.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tfos import _constants as C
from tfos.errors import TFOSConfigError

if TYPE_CHECKING:
    from pyspark import SparkContext

log = logging.getLogger(__name__)

_LOCAL_CLUSTER = re.compile(r"local-cluster\[\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\]")
#: Spark's thread-local properties behind setJobGroup / setJobDescription.
_GROUP, _DESCRIPTION, _INTERRUPT = "spark.jobGroup.id", "spark.job.description", "spark.job.interruptOnCancel"
#: A function Spark runs on each partition: (partition index, its rows or Arrow batches) -> values.
PartitionFn = Callable[[int, Iterator[Any]], Iterator[Any]]


def backend(spark: Any) -> Spark:
    """The backend for a SparkContext, a SparkSession (classic or Spark Connect) or a backend."""
    if isinstance(spark, Spark):
        return spark
    if is_connect(spark):
        return Connect(spark)
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    if isinstance(spark, SparkContext):
        return Classic(spark)
    if isinstance(spark, SparkSession):
        return Classic(spark.sparkContext)
    raise TFOSConfigError(f"expected a SparkSession (classic or Spark Connect) or a SparkContext; got "
                          f"{type(spark).__name__}")


def start(conf: dict[str, str]) -> SparkContext:
    """A new Spark application with ``conf``, held by this process (the CLI's ``tfos reserve --master``)."""
    from pyspark import SparkConf, SparkContext

    return SparkContext(conf=SparkConf().setAll(list(conf.items())))


def connect(url: str) -> Any:
    """A Spark Connect session to ``url`` (``sc://HOST:PORT``), made as a notebook makes one."""
    from pyspark.sql import SparkSession

    return SparkSession.builder.remote(url).getOrCreate()


def is_connect(obj: Any) -> bool:
    """True for Spark Connect objects (sessions, DataFrames): they live in ``pyspark.sql.connect``."""
    return type(obj).__module__.startswith("pyspark.sql.connect.")


class Spark:
    """What tfos needs from Spark; :class:`Classic` and :class:`Connect` implement it."""

    remote = False

    def conf(self, key: str, default: str | None = None) -> str | None:
        raise NotImplementedError

    @property
    def master(self) -> str:
        return self.conf("spark.master", "") or ""

    def application_id(self) -> str:
        """The Spark application's id, as its UI and logs show it."""
        return self.conf("spark.app.id", "") or ""

    def preflight(self, num_executors: int) -> bool:
        """Rejects Spark settings that break reservation; returns True in local (single-JVM) mode."""
        if (self.conf("spark.dynamicAllocation.enabled", "false") or "").lower() == "true":
            raise TFOSConfigError("spark.dynamicAllocation.enabled=true: executors come and go, so tfos nodes "
                                  "cannot be pinned to them. Set spark.dynamicAllocation.enabled=false.")
        if (self.conf("spark.speculation", "false") or "").lower() == "true":
            raise TFOSConfigError("spark.speculation=true: Spark would run a second copy of a slow feeding task "
                                  "beside the first, and each node takes a partition's rows from one attempt at a "
                                  "time. Set spark.speculation=false (tfos already survives retried tasks).")
        master = self.master
        local_cluster = _LOCAL_CLUSTER.match(master)
        task_cpus = int(self.conf("spark.task.cpus", "1") or 1)
        cores = int(local_cluster.group(2)) if local_cluster else int(self.conf("spark.executor.cores", "0") or 0)
        if cores and cores // task_cpus > 1:
            raise TFOSConfigError(f"executors have {cores // task_cpus} task slots ({cores} cores, spark.task.cpus="
                                  f"{task_cpus}), so two tfos nodes could share one. Set spark.task.cpus={cores}.")
        executors = (int(local_cluster.group(1)) if local_cluster
                     else int(self.conf("spark.executor.instances", "0") or 0))
        if executors and executors < num_executors:
            raise TFOSConfigError(f"num_executors={num_executors} but the Spark application has only "
                                  f"{executors} executors; lower num_executors or add executors.")
        return master.startswith("local") and not local_cluster

    def server_hosts(self) -> tuple[str, str]:
        """(address the control server binds, address nodes use to reach it)."""
        raise NotImplementedError

    def default_fs(self) -> str:
        """Hadoop's default filesystem, e.g. ``file:///`` or ``hdfs://nn:8020``."""
        raise NotImplementedError

    def live_executors(self) -> int:
        """Executors registered with the application now (-1 when Spark cannot say)."""
        return -1

    def described(self, group: str | None, description: str) -> contextlib.AbstractContextManager[None]:
        """Runs the Spark jobs the calling thread starts in the ``with`` body under ``group`` and
        ``description``; the thread's own labels are restored afterwards."""
        raise NotImplementedError

    def job_thread(self, group: str, description: str, target: Callable[..., None], *args: Any) -> threading.Thread:
        """Runs ``target(*args)`` in a daemon thread whose Spark jobs carry ``group`` and ``description``."""

        def body() -> None:
            with self.described(group, description):
                target(*args)

        thread = self._thread(body, f"{group}-{description}")
        thread.start()
        return thread

    def _thread(self, body: Callable[[], None], name: str) -> threading.Thread:
        return threading.Thread(target=body, name=name, daemon=True)

    def cancel(self, group: str) -> None:
        """Cancels every running job of ``group`` (interrupting its tasks)."""
        raise NotImplementedError

    def run_on_executors(self, num_tasks: int, task: Callable[[Iterator[Any]], Iterator[Any]]) -> list[Any]:
        """Runs ``task`` as ``num_tasks`` tasks, one per partition, and collects what they yield."""
        raise NotImplementedError

    # ---- data --------------------------------------------------------------------------------
    def check_data(self, data: Any) -> Any:
        """``data`` ready to feed: a DataFrame with its vectors as arrays (its column types checked), or an
        RDD (classic only)."""
        if _is_dataframe(data):
            from tfos.feed._feeder import check_dataframe_schema, vectors_as_arrays

            check_dataframe_schema(data)
            return vectors_as_arrays(data)
        raise TFOSConfigError(f"data must be a pyspark DataFrame or RDD; got {type(data).__name__}")

    def first_rows(self, data: Any) -> list[Any]:
        """The first row of checked ``data`` (an Arrow record batch of one row for a DataFrame); [] if empty."""
        return [batch for batch in data.limit(1).toArrow().to_batches() if batch.num_rows]

    def partition_counts(self, data: Any, description: str) -> list[int]:
        """Rows in each partition of checked ``data``, by one Spark job. A DataFrame's rows stay in the JVM:
        its tasks see a constant column of the same partitions."""
        with self.described(None, description):  # an SQL expression: the same on both backends
            return self.feed_job(data.selectExpr("true AS row"), _count_rows)

    def feed_job(self, data: Any, fn: PartitionFn) -> list[int]:
        """Runs ``fn`` on every partition of checked ``data`` (which yields one count each); the counts by
        partition."""
        rows = data.mapInArrow(_ByPartition(fn), "partition long, value long").collect()
        return [value for _, value in sorted((row.partition, row.value) for row in rows)]

    def inference(self, data: Any, fn: PartitionFn, schema: Any) -> Any:
        """A DataFrame of what ``fn`` yields for each partition of checked ``data``, with ``schema`` (a
        StructType or DDL string)."""
        if schema is None:
            raise TFOSConfigError("inference() from a DataFrame on Spark Connect returns a DataFrame: pass "
                                  "schema= naming the columns main_fun's batch_results yields, e.g. "
                                  "schema='prediction double' or 'label long, probability array<float>'")
        struct = data.mapInArrow(_no_rows, schema).schema  # analysis only: a DDL string becomes a StructType
        return data.mapInArrow(_Results(fn, struct.json()), struct)

    def read_text(self, path: str) -> str | None:
        """A small file's text on any Hadoop filesystem (None if missing)."""
        raise NotImplementedError

    def write_text(self, path: str, text: str) -> None:
        """Replaces a small file on any Hadoop filesystem."""
        raise NotImplementedError

    def path_exists(self, path: str) -> bool:
        """Whether ``path`` (a path or URI on Spark's filesystems) exists, as the Spark driver sees it."""
        raise NotImplementedError

    def add_file(self, path: str) -> None:
        """Ships a local file to the executors, where ``SparkFiles.get(<its file name>)`` finds it."""
        raise NotImplementedError

    def read_pickle_file(self, path: str) -> list[Any]:
        """The objects of an RDD saved with ``saveAsPickleFile`` (what tfos.ml saved its state as before)."""
        raise TFOSConfigError(f"{path} was saved by an older tfos as a pickle file, which only a SparkContext reads: "
                              "load it once from a classic SparkSession and save it again")


class Classic(Spark):
    """A SparkContext in this process (py4j to its JVM)."""

    def __init__(self, sc: SparkContext) -> None:
        self.sc = sc

    def conf(self, key: str, default: str | None = None) -> str | None:
        return self.sc.getConf().get(key, default)

    @property
    def master(self) -> str:
        return self.sc.master or ""

    def application_id(self) -> str:
        return self.sc.applicationId

    def preflight(self, num_executors: int) -> bool:
        local = super().preflight(num_executors)
        # Executors run sc.pythonExec, which PySpark takes from PYSPARK_PYTHON only: spark-submit turns
        # spark.pyspark.python into that variable, but a SparkContext made in a plain Python process (a
        # notebook, tfos reserve) ignores the setting and runs python3 from the PATH.
        python = os.environ.get("PYSPARK_PYTHON") or self.conf("spark.pyspark.python") or sys.executable
        if self.sc.pythonExec != python:
            log.info("executors will run %s", python)
            self.sc.pythonExec = python
        return local

    def server_hosts(self) -> tuple[str, str]:
        override = C.get_str(C.SERVER_HOST)
        if override:
            return override, override
        advertised = self.conf("spark.driver.host") or socket.gethostbyname(socket.gethostname())
        return self.conf("spark.driver.bindAddress") or "0.0.0.0", advertised

    def default_fs(self) -> str:
        return self.sc._jsc.hadoopConfiguration().get("fs.defaultFS") or "file:///"

    def live_executors(self) -> int:
        try:
            return max(0, self.sc._jsc.sc().getExecutorMemoryStatus().size() - 1)
        except Exception:  # noqa: BLE001 - diagnostics only
            return -1

    @contextlib.contextmanager
    def described(self, group: str | None, description: str) -> Iterator[None]:
        sc = self.sc
        saved = {key: sc.getLocalProperty(key) for key in (_GROUP, _DESCRIPTION, _INTERRUPT)}
        if group is not None:
            sc.setJobGroup(group, description, interruptOnCancel=True)
        else:
            sc.setJobDescription(description)
        try:
            yield
        finally:
            for key, value in saved.items():
                sc.setLocalProperty(key, value)  # None clears it

    def _thread(self, body: Callable[[], None], name: str) -> threading.Thread:
        from pyspark import InheritableThread

        return InheritableThread(target=body, name=name, daemon=True)

    def cancel(self, group: str) -> None:
        self.sc.cancelJobGroup(group)

    def run_on_executors(self, num_tasks: int, task: Callable[[Iterator[Any]], Iterator[Any]]) -> list[Any]:
        return self.sc.parallelize(range(num_tasks), num_tasks).mapPartitions(task).collect()

    def check_data(self, data: Any) -> Any:
        from pyspark import RDD

        return data if isinstance(data, RDD) else super().check_data(data)

    def first_rows(self, data: Any) -> list[Any]:
        from pyspark import RDD

        return data.take(1) if isinstance(data, RDD) else super().first_rows(data)

    def partition_counts(self, data: Any, description: str) -> list[int]:
        from pyspark import RDD

        if not isinstance(data, RDD):
            return super().partition_counts(data, description)
        with self.described(None, description):
            return data.mapPartitionsWithIndex(_count_rows).collect()

    def feed_job(self, data: Any, fn: PartitionFn) -> list[int]:
        from pyspark import RDD

        return data.mapPartitionsWithIndex(fn).collect() if isinstance(data, RDD) else super().feed_job(data, fn)

    def inference(self, data: Any, fn: PartitionFn, schema: Any) -> Any:
        """An RDD of results (as TensorFlowOnSpark returned), or a DataFrame when ``schema`` is given."""
        from pyspark import RDD

        if schema is not None and not isinstance(data, RDD):
            return super().inference(data, fn, schema)
        if schema is not None:
            raise TFOSConfigError("schema= makes inference() return a DataFrame, which needs DataFrame input; "
                                  "an RDD gives an RDD of results (leave schema out)")
        rdd = data if isinstance(data, RDD) else _arrow_batches_rdd(data)
        return rdd.mapPartitionsWithIndex(fn)

    def read_text(self, path: str) -> str | None:
        jvm = self.sc._jvm
        hpath = jvm.org.apache.hadoop.fs.Path(path)
        fs = hpath.getFileSystem(self.sc._jsc.hadoopConfiguration())
        if not fs.exists(hpath):
            return None
        stream = fs.open(hpath)
        try:
            return jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
        finally:
            stream.close()

    def write_text(self, path: str, text: str) -> None:
        jvm = self.sc._jvm
        hpath = jvm.org.apache.hadoop.fs.Path(path)
        tmp = jvm.org.apache.hadoop.fs.Path(path + ".tmp")
        fs = hpath.getFileSystem(self.sc._jsc.hadoopConfiguration())
        out = fs.create(tmp, True)
        try:
            out.write(bytearray(text.encode()))
        finally:
            out.close()
        fs.delete(hpath, False)
        fs.rename(tmp, hpath)

    def path_exists(self, path: str) -> bool:
        hpath = self.sc._jvm.org.apache.hadoop.fs.Path(path)
        return bool(hpath.getFileSystem(self.sc._jsc.hadoopConfiguration()).exists(hpath))

    def add_file(self, path: str) -> None:
        self.sc.addFile(path)

    def read_pickle_file(self, path: str) -> list[Any]:
        return self.sc.pickleFile(path).collect()


class Connect(Spark):
    """A Spark Connect session: the driver JVM is remote, reached over gRPC; no SparkContext, no RDD.

    Jobs are labelled and cancelled with job tags, which the Connect client keeps per thread.
    """

    remote = True

    def __init__(self, spark: Any) -> None:
        self.spark = spark

    def conf(self, key: str, default: str | None = None) -> str | None:
        return self.spark.conf.get(key, default)

    def server_hosts(self) -> tuple[str, str]:
        """The control server stays on this client: it binds the address the client reaches the Connect
        server from, which executors beside that server reach too (or ``TFOS_SERVER_HOST``)."""
        override = C.get_str(C.SERVER_HOST)
        if override:
            return override, override
        host, port = self._endpoint()
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((host, port))  # UDP: picks the route, sends nothing
            local = probe.getsockname()[0]
        return local, local

    def _endpoint(self) -> tuple[str, int]:
        """(IP address, port) of the Connect server this session talks to."""
        builder = self.spark.client._builder
        url = getattr(builder, "url", None)  # DefaultChannelBuilder's parsed sc:// URL
        host = url.hostname if url is not None else str(builder.host).strip("[]")
        return socket.gethostbyname(host or "localhost"), (url.port if url is not None else None) or 15002

    def preflight(self, num_executors: int) -> bool:
        local = super().preflight(num_executors)
        host, _ = self._endpoint()
        if not getattr(self.spark.client._builder, "secure", True) and not host.startswith("127."):
            log.warning("the Spark Connect channel to %s is not encrypted, and tfos's node tasks carry the "
                        "cluster's key through it: connect with sc://HOST:PORT/;use_ssl=true", host)
        return local

    def default_fs(self) -> str:
        return self.conf("spark.hadoop.fs.defaultFS") or "file:///"

    @contextlib.contextmanager
    def described(self, group: str | None, description: str) -> Iterator[None]:
        tags = [tag for tag in (group, _tag(description)) if tag and tag not in self.spark.getTags()]
        for tag in tags:
            self.spark.addTag(tag)
        try:
            yield
        finally:
            for tag in tags:
                self.spark.removeTag(tag)

    def cancel(self, group: str) -> None:
        self.spark.interruptTag(group)

    def run_on_executors(self, num_tasks: int, task: Callable[[Iterator[Any]], Iterator[Any]]) -> list[Any]:
        rows = self.spark.range(0, num_tasks, 1, num_tasks).mapInArrow(_Pickled(task), "value binary").collect()
        return [pickle.loads(row.value) for row in rows]

    def check_data(self, data: Any) -> Any:
        if not _is_dataframe(data):
            what = "has no RDDs" if "RDD" in type(data).__name__ else f"cannot feed a {type(data).__name__}"
            raise TFOSConfigError(f"a Spark Connect session {what}: pass a DataFrame, e.g. "
                                  "spark.createDataFrame(rows, schema) or spark.read.parquet(path)")
        if not is_connect(data):
            raise TFOSConfigError("this DataFrame belongs to a classic SparkSession, the cluster to a Spark "
                                  "Connect session: make the DataFrame from the Connect session")
        return super().check_data(data)

    def read_text(self, path: str) -> str | None:
        from pyspark.errors import AnalysisException

        try:
            lines = self.spark.read.text(path).collect()
        except AnalysisException:
            return None  # PATH_NOT_FOUND
        return "\n".join(row.value for row in lines)

    def write_text(self, path: str, text: str) -> None:
        self.spark.createDataFrame([(text,)], "value string").coalesce(1).write.mode("overwrite").text(path)

    def path_exists(self, path: str) -> bool:
        """Asks the server: analysing a read of ``path`` lists it (no job, no file read)."""
        from pyspark.errors import AnalysisException

        try:
            _ = self.spark.read.format("binaryFile").load(path).select("path").schema
        except AnalysisException as exc:
            if "PATH_NOT_FOUND" in str(exc):
                return False
            raise
        return True

    def add_file(self, path: str) -> None:
        """Uploads the file as a session artifact; the executors' Python workers of this session find it
        with ``SparkFiles.get``."""
        self.spark.addArtifacts(path, file=True)


def _tag(description: str) -> str:
    """A Connect job tag from a description (tags cannot hold commas)."""
    return description.replace(",", ";")


def _is_dataframe(data: Any) -> bool:
    from pyspark.sql import DataFrame

    return isinstance(data, DataFrame)


def _count_rows(partition: int, rows: Iterator[Any]) -> Iterator[int]:
    from tfos.feed._feeder import _is_record_batch

    yield sum(item.num_rows if _is_record_batch(item) else 1 for item in rows)


def _no_rows(batches: Iterator[Any]) -> Iterator[Any]:
    return iter(())


@dataclass(frozen=True)
class _ByPartition:
    """A ``mapInArrow`` function that runs ``fn`` on its partition's record batches; one row per value."""

    fn: PartitionFn

    def __call__(self, batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa
        from pyspark import TaskContext

        partition = TaskContext.get().partitionId()
        for value in self.fn(partition, batches):
            yield pa.RecordBatch.from_pydict({"partition": [partition], "value": [int(value)]})


@dataclass(frozen=True)
class _Results:
    """A ``mapInArrow`` function that runs an inference ``fn`` and turns its result rows into record batches."""

    fn: PartitionFn
    schema_json: str
    rows_per_batch: int = 4096

    def __call__(self, batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa
        from pyspark import TaskContext
        from pyspark.sql.pandas.types import to_arrow_schema
        from pyspark.sql.types import StructType

        schema = to_arrow_schema(StructType.fromJson(json.loads(self.schema_json)))
        partition = TaskContext.get().partitionId()
        rows: list[Any] = []
        for row in self.fn(partition, batches):
            rows.append(row if len(schema) > 1 else (row,))
            if len(rows) == self.rows_per_batch:
                yield _record_batch(pa, schema, rows, partition)
                rows = []
        if rows:
            yield _record_batch(pa, schema, rows, partition)


def _record_batch(pa: Any, schema: Any, rows: list[Any], partition: int) -> Any:
    from tfos.errors import FeedDataError

    columns = list(zip(*rows))
    if len(columns) != len(schema):
        raise FeedDataError(f"partition {partition}: batch_results gave rows of {len(columns)} values for a schema "
                            f"of {len(schema)} columns ({', '.join(schema.names)})", partition=partition)
    arrays = []
    for field, values in zip(schema, columns):
        try:
            arrays.append(pa.array([v.tolist() if hasattr(v, "tolist") else v for v in values], type=field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise FeedDataError(f"partition {partition}: result column {field.name!r} does not fit the schema's "
                                f"type {field.type}: {exc}", partition=partition, column=field.name) from None
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


@dataclass(frozen=True)
class _Pickled:
    """A ``mapInArrow`` function that feeds its rows' first column to ``task`` and pickles what it yields."""

    task: Callable[[Iterator[Any]], Iterator[Any]]

    def __call__(self, batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa

        values = (value for batch in batches for value in batch.column(0).to_pylist())
        yield pa.RecordBatch.from_pydict({"value": [pickle.dumps(out) for out in self.task(values)]},
                                         schema=pa.schema([("value", pa.binary())]))


def _arrow_batches_rdd(df: Any) -> Any:
    """An RDD of Arrow record batches of checked ``df`` (classic): Spark carries them between its JVM and
    Python as Arrow IPC streams, one per batch, turned back into batches in the task that reads them."""

    def to_ipc(batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa

        for batch in batches:
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, batch.schema) as writer:
                writer.write_batch(batch)
            yield pa.RecordBatch.from_pydict({"ipc": [sink.getvalue().to_pybytes()]})

    def from_ipc(row: Any) -> Any:
        import pyarrow as pa

        return pa.ipc.open_stream(row[0]).read_next_batch()

    return df.mapInArrow(to_ipc, "ipc binary").rdd.map(from_ipc)


def is_streaming(data: Any) -> bool:
    """True for a Structured Streaming DataFrame."""
    from pyspark.sql import DataFrame

    return isinstance(data, DataFrame) and data.isStreaming


def start_stream(df: Any, on_batch: Callable[[Any, int], None], checkpoint: str | None, name: str) -> Any:
    """Starts a streaming query that calls ``on_batch(batch_df, batch_id)`` for each micro-batch (on Spark
    Connect, in a Python process beside the server); without ``checkpoint`` Spark picks a temporary one."""
    writer = df.writeStream.foreachBatch(on_batch).queryName(re.sub(r"\W+", "_", name))
    return (writer if checkpoint is None else writer.option("checkpointLocation", checkpoint)).start()


def await_trigger(query: Any, timeout: float) -> None:
    """Waits, up to ``timeout`` seconds, until ``query`` runs no micro-batch."""
    deadline = time.monotonic() + timeout
    while query.isActive and query.status.get("isTriggerActive") and time.monotonic() < deadline:
        time.sleep(0.2)


def raise_stream_error(query: Any) -> None:
    """Raises a stopped query's failure as a TFOSError, if it failed."""
    from tfos.errors import TFOSError

    error = query.exception()
    if error is not None:
        raise TFOSError(f"the streaming query feeding the cluster failed: {short_error(error)}")


def described(spark: Any, group: str | None, description: str) -> contextlib.AbstractContextManager[None]:
    """``backend(spark).described(group, description)``, for callers holding a SparkContext or session."""
    return backend(spark).described(group, description)


def default_fs(spark: Any) -> str:
    """``backend(spark).default_fs()``."""
    return backend(spark).default_fs()


def short_error(exc: BaseException) -> str:
    """The Python error inside a Py4J / Spark failure, without the JVM stack."""
    text = str(exc)
    python_errors = re.findall(r"^\s*((?:[\w.]+\.)?\w*(?:Error|Exception): .*)$", text, flags=re.MULTILINE)
    python_errors = [line for line in python_errors if not line.startswith(("org.", "java.", "scala."))]
    return (python_errors[-1] if python_errors else text.splitlines()[0] if text else type(exc).__name__)[:2000]
