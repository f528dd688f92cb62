"""TFRecords <-> DataFrames (driver plans, executors read and write with TensorFlow).

``save_tfrecords`` writes one ``part-r-NNNNN`` file of ``tf.train.Example`` records
per partition; ``load_tfrecords`` reads them back into a DataFrame whose schema is
inferred from the first record (or given). No Hadoop jar is involved: Spark tasks
use ``tf.io.TFRecordWriter``, ``tf.data.TFRecordDataset`` and ``tf.io.gfile`` (to list,
clear and mark the directory), so every filesystem TensorFlow knows works. The driver
never imports TensorFlow, and both run as DataFrame jobs (``mapInArrow``), the same on a
classic and a Spark Connect session.

Column types: numbers and booleans become ``int64_list`` / ``float_list``, strings and
binary ``bytes_list``; arrays and ML vectors of those become lists. Read back, int64
is LongType, float is DoubleType, bytes are StringType unless named in
``binary_features``; a feature with more than one value in the first record is an
ArrayType.
"""

from __future__ import annotations

import json
import os
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

from tfos.errors import FeedDataError, TFOSConfigError

_FLOATS = ("float", "double")
_INTS = ("boolean", "tinyint", "smallint", "int", "bigint", "long")
_BYTES = ("string", "binary")
SUPPORTED_DTYPES = (*_FLOATS, *_INTS, *_BYTES, "vector", *(f"array<{t}>" for t in (*_FLOATS, *_INTS, *_BYTES)))

#: DataFrames made by load_tfrecords -> the directory they were read from.
_LOADED: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def save_tfrecords(df: Any, output_dir: str, overwrite: bool = False) -> int:
    """Writes ``df`` as TFRecord files of ``tf.train.Example`` into ``output_dir``.

    Args:
        df: the DataFrame; column types as in the module docstring, no nulls.
        output_dir: a directory path or URI TensorFlow can write (local, hdfs://, gs://, ...).
        overwrite: replace an existing non-empty ``output_dir`` instead of failing.

    Returns:
        The number of records written.

    Raises:
        TFOSConfigError: an unsupported column type, or ``output_dir`` exists (without overwrite).
        FeedDataError: a null value (names the partition, row and column).
    """
    dtypes = list(df.dtypes)
    unsupported = [f"{name} ({dtype})" for name, dtype in dtypes if dtype not in SUPPORTED_DTYPES]
    if unsupported:
        raise TFOSConfigError(f"columns {', '.join(unsupported)} cannot be stored in tf.train.Example; supported "
                              f"types: {', '.join(SUPPORTED_DTYPES)}. Cast or drop them first.")
    from pyspark.ml.functions import vector_to_array

    from tfos.driver._spark import backend

    spark = backend(df.sparkSession)
    output_dir = qualified(output_dir)
    with spark.described(None, f"tfos save TFRecords to {output_dir}"):
        if spark.run_on_executors(1, _Directory(output_dir, "clear" if overwrite else "create"))[0] == "not empty":
            raise TFOSConfigError(f"{output_dir} exists and is not empty; choose a new directory or pass "
                                  "overwrite=True")
        # vectors as arrays: Arrow carries a vector as a struct; to_example writes both as a float list
        columns = [(vector_to_array(df[name]) if dtype == "vector" else df[name]).alias(name) for name, dtype in dtypes]
        writer = _PartitionWriter(output_dir, [(n, "array<double>" if t == "vector" else t) for n, t in dtypes])
        counts = df.select(columns).mapInArrow(writer, "count long").collect()
        spark.run_on_executors(1, _Directory(output_dir, "mark"))
    return int(sum(row["count"] for row in counts))


def load_tfrecords(spark: Any, input_dir: str, binary_features: Iterable[str] = (), schema: Any = None) -> Any:
    """Reads the TFRecord files in ``input_dir`` into a DataFrame, one row per ``tf.train.Example``.

    Args:
        spark: a SparkSession or SparkContext.
        input_dir: a directory (files starting with ``_`` or ``.`` are skipped) or a glob.
        binary_features: features to read as BinaryType (bytes look like strings otherwise).
        schema: a StructType to use instead of inferring it from the first record.

    Raises:
        TFOSConfigError: no TFRecord files at ``input_dir``.
        FeedDataError: a record that does not fit the schema (names the file and record).
    """
    from pyspark.sql import SparkSession
    from pyspark.sql.types import StructType

    from tfos.driver._spark import backend

    session = spark if hasattr(spark, "createDataFrame") else SparkSession.builder.getOrCreate()  # or a SparkContext
    input_dir = qualified(input_dir)
    binary = tuple(binary_features)
    files, first = backend(session).run_on_executors(1, _Listing(input_dir, binary, schema is None))[0]
    if not files:
        raise TFOSConfigError(f"no TFRecord files found at {input_dir}")
    if schema is None:
        if first is None:
            raise TFOSConfigError(f"the TFRecord files at {input_dir} hold no records; pass schema= to read them")
        schema = StructType.fromJson(json.loads(first))
    # task k reads file k
    df = session.range(0, len(files), 1, len(files)).mapInArrow(_PartitionReader(files, schema.json(), binary),
                                                                 schema)
    _LOADED[df] = input_dir
    return df


def loaded_from(df: Any) -> str | None:
    """The directory ``df`` was read from by :func:`load_tfrecords`, or None."""
    return _LOADED.get(df)


def to_example(row: Any, dtypes: list[tuple[str, str]], partition: int = 0, index: int = 0) -> bytes:
    """One DataFrame row as a serialized ``tf.train.Example`` (``dtypes`` as in ``DataFrame.dtypes``)."""
    import tensorflow as tf

    features = {}
    for name, dtype in dtypes:
        value = row[name]
        if value is None:
            raise FeedDataError(f"partition {partition} row {index}: column {name!r} is null; tf.train.Example "
                                "holds no nulls: fill or drop them first", partition=partition, row=index)
        base = dtype[6:-1] if dtype.startswith("array<") else dtype
        values = value.toArray().tolist() if dtype == "vector" else value if dtype.startswith("array<") else [value]
        if base in _FLOATS or dtype == "vector":
            features[name] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
        elif base in _INTS:
            features[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))
        elif base == "binary":
            features[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[bytes(v) for v in values]))
        elif base == "string":
            features[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode() for v in values]))
        else:
            raise TFOSConfigError(f"column {name!r} of type {dtype} cannot be stored in tf.train.Example")
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def infer_schema(example: Any, binary_features: Iterable[str] = ()) -> Any:
    """The DataFrame schema of a ``tf.train.Example`` (columns sorted by feature name)."""
    from pyspark.sql.types import ArrayType, BinaryType, DoubleType, LongType, StringType, StructField, StructType

    binary = set(binary_features)
    fields = []
    for name, feature in sorted(example.features.feature.items()):
        kind = feature.WhichOneof("kind")
        values = getattr(feature, kind).value if kind else []
        if name in binary:
            sql_type: Any = BinaryType()
        elif kind == "int64_list":
            sql_type = LongType()
        elif kind == "float_list":
            sql_type = DoubleType()
        else:
            sql_type = StringType()
        fields.append(StructField(name, ArrayType(sql_type) if len(values) > 1 else sql_type, True))
    return StructType(fields)


def from_example(record: bytes, binary_features: Iterable[str] = (), schema: Any = None) -> dict[str, Any]:
    """A serialized ``tf.train.Example`` as ``{column: value}``.

    Without ``schema`` single values are scalars and longer ones lists; with it, ArrayType
    columns are always lists and a scalar column with several values is a FeedDataError.
    """
    import tensorflow as tf

    example = tf.train.Example.FromString(bytes(record))
    binary = set(binary_features)
    arrays = None if schema is None else {f.name: f.dataType.typeName() == "array" for f in schema.fields}
    names = [f.name for f in schema.fields] if schema is not None else sorted(example.features.feature)
    out = {}
    for name in names:
        feature = example.features.feature.get(name)
        kind = feature.WhichOneof("kind") if feature is not None else None
        values = list(getattr(feature, kind).value) if kind else []
        if kind == "bytes_list" and name not in binary:
            values = [v.decode() for v in values]
        elif kind == "bytes_list":
            values = [bytearray(v) for v in values]
        is_array = arrays[name] if arrays is not None else len(values) > 1
        if is_array:
            out[name] = values
        elif len(values) > 1:
            raise FeedDataError(f"feature {name!r} has {len(values)} values but the schema has a single value; "
                                "pass a schema with an ArrayType for it")
        else:
            out[name] = values[0] if values else None
    return out


class _PartitionWriter:
    """``mapInArrow`` task: writes one partition as ``part-r-NNNNN`` (via a temporary file, renamed when complete)
    and yields its count of records."""

    def __init__(self, output_dir: str, dtypes: list[tuple[str, str]]) -> None:
        self.output_dir = output_dir
        self.dtypes = dtypes

    def __call__(self, batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa
        import tensorflow as tf
        from pyspark import TaskContext

        task = TaskContext.get()
        partition = task.partitionId()
        final = f"{self.output_dir}/part-r-{partition:05d}"
        temp = f"{self.output_dir}/.part-r-{partition:05d}.attempt-{task.attemptNumber()}"
        count = 0
        with tf.io.TFRecordWriter(temp) as writer:
            for batch in batches:
                for row in batch.to_pylist():
                    writer.write(to_example(row, self.dtypes, partition, count))
                    count += 1
        tf.io.gfile.rename(temp, final, overwrite=True)
        yield pa.RecordBatch.from_pydict({"count": [count]}, schema=pa.schema([("count", pa.int64())]))


class _Directory:
    """One-task job on an output directory: ``create`` it (answering ``not empty`` if it holds files),
    ``clear`` it (deleting what it holds) or ``mark`` it complete with ``_SUCCESS``."""

    def __init__(self, path: str, action: str) -> None:
        self.path = path
        self.action = action

    def __call__(self, values: Iterator[Any]) -> Iterator[str]:
        import tensorflow as tf

        for _ in values:
            gfile = tf.io.gfile
            if self.action == "mark":
                with gfile.GFile(f"{self.path}/_SUCCESS", "w") as marker:
                    marker.write("")  # GFile creates the file on its first write
                yield "marked"
                continue
            if gfile.exists(self.path) and (not gfile.isdir(self.path) or gfile.listdir(self.path)):
                if self.action != "clear":
                    yield "not empty"
                    continue
                gfile.rmtree(self.path) if gfile.isdir(self.path) else gfile.remove(self.path)
            gfile.makedirs(self.path)
            yield "ready"


class _Listing:
    """One-task job: the data files under a directory (or matching a glob), and the schema of the first
    record among them (JSON; None when they hold none or it is not asked for)."""

    def __init__(self, input_dir: str, binary_features: tuple[str, ...], infer: bool) -> None:
        self.input_dir = input_dir
        self.binary_features = binary_features
        self.infer = infer

    def __call__(self, values: Iterator[Any]) -> Iterator[tuple[list[str], str | None]]:
        import tensorflow as tf

        gfile = tf.io.gfile
        for _ in values:
            files = []
            for match in gfile.glob(self.input_dir):
                children = [f"{match}/{name}" for name in gfile.listdir(match)] if gfile.isdir(match) else [match]
                files += [c for c in children if not os.path.basename(c.rstrip("/")).startswith(("_", "."))
                          and not gfile.isdir(c)]
            files = sorted(_tf_uri(f) for f in files)
            yield files, self._first_schema(files) if self.infer else None

    def _first_schema(self, files: list[str]) -> str | None:
        import tensorflow as tf

        for path in files:
            for record in tf.data.TFRecordDataset(path).take(1).as_numpy_iterator():
                return infer_schema(tf.train.Example.FromString(record), self.binary_features).json()
        return None


class _PartitionReader:
    """``mapInArrow`` task: the rows of the files its ids name, shaped by the schema, as record batches."""

    def __init__(self, files: list[str], schema_json: str, binary_features: tuple[str, ...],
                 rows_per_batch: int = 4096) -> None:
        self.files = files
        self.schema_json = schema_json
        self.binary_features = binary_features
        self.rows_per_batch = rows_per_batch

    def __call__(self, batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa
        import tensorflow as tf
        from pyspark.sql.pandas.types import to_arrow_schema
        from pyspark.sql.types import StructType

        schema = StructType.fromJson(json.loads(self.schema_json))
        arrow_schema = to_arrow_schema(schema)
        for ids in batches:
            for file_id in ids.column(0).to_pylist():
                path = self.files[file_id]
                rows: list[dict[str, Any]] = []
                for i, record in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
                    try:
                        rows.append(from_example(record, self.binary_features, schema))
                    except FeedDataError as exc:
                        raise FeedDataError(f"{path} record {i}: {exc}", row=i) from None
                    if len(rows) == self.rows_per_batch:
                        yield _batch(pa, rows, arrow_schema, path)
                        rows = []
                if rows:
                    yield _batch(pa, rows, arrow_schema, path)


def _batch(pa: Any, rows: list[dict[str, Any]], arrow_schema: Any, path: str) -> Any:
    try:
        return pa.RecordBatch.from_pylist(rows, schema=arrow_schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
        raise FeedDataError(f"{path}: records do not fit the schema: {exc}") from None


def qualified(path: str) -> str:
    """Relative local paths are made absolute here, on the driver: executors run elsewhere."""
    if "://" in path or os.path.isabs(path):
        return path.rstrip("/") or "/"
    return os.path.abspath(path)


def _tf_uri(uri: str) -> str:
    """TensorFlow opens local files by plain path, not as ``file:/...``."""
    if uri.startswith("file:"):
        return "/" + uri[len("file:"):].lstrip("/")
    return uri
