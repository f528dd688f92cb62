"""TFRecords <-> DataFrames (driver plans, executors read and write with TensorFlow).

``save_tfrecords`` writes one ``part-r-NNNNN`` file of ``tf.train.Example`` records
per partition; ``load_tfrecords`` reads them back into a DataFrame whose schema is
inferred from the first record (or given). No Hadoop jar is involved: Spark tasks
use ``tf.io.TFRecordWriter`` and ``tf.data.TFRecordDataset``, so every filesystem
TensorFlow knows works. The driver never imports TensorFlow.

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
    sc = df.sparkSession.sparkContext
    output_dir = qualified(output_dir)
    fs, path = _hadoop_fs(sc, output_dir)
    if fs.exists(path) and len(fs.listStatus(path)) > 0:
        if not overwrite:
            raise TFOSConfigError(f"{output_dir} exists and is not empty; choose a new directory or pass "
                                  "overwrite=True")
        fs.delete(path, True)
    fs.mkdirs(path)
    from tfos.driver._spark import described

    with described(sc, None, f"tfos save TFRecords to {output_dir}"):
        counts = df.rdd.mapPartitionsWithIndex(_PartitionWriter(output_dir, dtypes)).collect()
    fs.create(sc._jvm.org.apache.hadoop.fs.Path(path, "_SUCCESS"), True).close()
    return int(sum(counts))


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

    session = spark if isinstance(spark, SparkSession) else SparkSession.builder.getOrCreate()
    sc = session.sparkContext
    input_dir = qualified(input_dir)
    files = _list_files(sc, input_dir)
    if not files:
        raise TFOSConfigError(f"no TFRecord files found at {input_dir}")
    binary = tuple(binary_features)
    if schema is None:
        first = sc.parallelize(files, len(files)).mapPartitions(_FirstSchema(binary)).take(1)
        if not first:
            raise TFOSConfigError(f"the TFRecord files at {input_dir} hold no records; pass schema= to read them")
        schema = StructType.fromJson(json.loads(first[0]))
    rows = sc.parallelize(files, len(files)).mapPartitions(_PartitionReader(schema.json(), binary))
    df = session.createDataFrame(rows, schema)
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
    """Spark task: writes one partition as ``part-r-NNNNN`` (via a temporary file, renamed when complete)."""

    def __init__(self, output_dir: str, dtypes: list[tuple[str, str]]) -> None:
        self.output_dir = output_dir
        self.dtypes = dtypes

    def __call__(self, partition: int, rows: Iterator[Any]) -> Iterator[int]:
        import tensorflow as tf
        from pyspark import TaskContext

        final = f"{self.output_dir}/part-r-{partition:05d}"
        temp = f"{self.output_dir}/.part-r-{partition:05d}.attempt-{TaskContext.get().attemptNumber()}"
        count = 0
        with tf.io.TFRecordWriter(temp) as writer:
            for count, row in enumerate(rows, start=1):
                writer.write(to_example(row, self.dtypes, partition, count - 1))
        tf.io.gfile.rename(temp, final, overwrite=True)
        yield count


class _FirstSchema:
    """Spark task: the schema (as JSON) of the first record among its files, if any."""

    def __init__(self, binary_features: tuple[str, ...]) -> None:
        self.binary_features = binary_features

    def __call__(self, files: Iterator[str]) -> Iterator[str]:
        import tensorflow as tf

        for path in files:
            for record in tf.data.TFRecordDataset(path).take(1).as_numpy_iterator():
                yield infer_schema(tf.train.Example.FromString(record), self.binary_features).json()
                return


class _PartitionReader:
    """Spark task: the rows of its TFRecord files, shaped by the schema."""

    def __init__(self, schema_json: str, binary_features: tuple[str, ...]) -> None:
        self.schema_json = schema_json
        self.binary_features = binary_features

    def __call__(self, files: Iterator[str]) -> Iterator[tuple[Any, ...]]:
        import tensorflow as tf
        from pyspark.sql.types import StructType

        schema = StructType.fromJson(json.loads(self.schema_json))
        names = [f.name for f in schema.fields]
        for path in files:
            for i, record in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
                try:
                    values = from_example(record, self.binary_features, schema)
                except FeedDataError as exc:
                    raise FeedDataError(f"{path} record {i}: {exc}", row=i) from None
                yield tuple(values[name] for name in names)


def qualified(path: str) -> str:
    """Relative local paths are made absolute here, on the driver: executors run elsewhere."""
    if "://" in path or os.path.isabs(path):
        return path.rstrip("/") or "/"
    return os.path.abspath(path)


def _hadoop_fs(sc: Any, uri: str) -> tuple[Any, Any]:
    jvm = sc._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    return path.getFileSystem(sc._jsc.hadoopConfiguration()), path


def _list_files(sc: Any, input_dir: str) -> list[str]:
    """Data files under ``input_dir`` (or matching it, for a glob), as URIs TensorFlow can open."""
    fs, path = _hadoop_fs(sc, input_dir)
    statuses = fs.globStatus(path) or []
    files = []
    for status in statuses:
        children = fs.listStatus(status.getPath()) if status.isDirectory() else [status]
        for child in children:
            name = child.getPath().getName()
            if child.isFile() and not name.startswith(("_", ".")):
                files.append(_tf_uri(child.getPath().toString()))
    return sorted(files)


def _tf_uri(uri: str) -> str:
    """TensorFlow opens local files by plain path; Hadoop writes them as ``file:/...``."""
    if uri.startswith("file:"):
        return "/" + uri[len("file:"):].lstrip("/")
    return uri
