"""TensorFlowOnSpark's ``dfutil`` module (driver; conversions run in executors): TFRecords <-> DataFrames.

The native :mod:`tfos.ml` TFRecord I/O with TFoS's names. No Hadoop jar: Spark tasks
read and write the files with TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from tfos.ml._tfrecord import (
    _LOADED,
    from_example,
    infer_schema,
    load_tfrecords,
    loaded_from,
    save_tfrecords,
    to_example,
)

__all__ = ["fromTFExample", "infer_schema", "isLoadedDF", "loadTFRecords", "loadedDF", "saveAsTFRecords",
           "toTFExample"]

#: DataFrame -> the directory loadTFRecords read it from (weakly keyed: forgotten with the DataFrame).
loadedDF = _LOADED  # noqa: N816 - TensorFlowOnSpark's name


def isLoadedDF(df: Any) -> bool:  # noqa: N802 - TensorFlowOnSpark's names
    """True if ``df`` was made by :func:`loadTFRecords`."""
    return loaded_from(df) is not None


def saveAsTFRecords(df: Any, output_dir: str) -> None:  # noqa: N802
    """Saves ``df`` as TFRecords of ``tf.train.Example`` in ``output_dir`` (which must not exist yet)."""
    save_tfrecords(df, output_dir)


def loadTFRecords(sc: Any, input_dir: str, binary_features: Iterable[str] = ()) -> Any:  # noqa: N802
    """Loads the TFRecords in ``input_dir`` as a DataFrame, its schema inferred from the first record."""
    return load_tfrecords(sc, input_dir, binary_features)


def toTFExample(dtypes: list[tuple[str, str]]) -> Callable[[Iterator[Any]], list[tuple[bytearray, None]]]:  # noqa: N802
    """A mapPartitions function turning Rows into ``(serialized tf.train.Example, None)`` pairs."""

    def convert(rows: Iterator[Any]) -> list[tuple[bytearray, None]]:
        return [(bytearray(to_example(row, dtypes, index=i)), None) for i, row in enumerate(rows)]

    return convert


def fromTFExample(records: Iterator[Any], binary_features: Iterable[str] = ()) -> list[Any]:  # noqa: N802
    """A mapPartitions function turning serialized examples (or ``(bytes, None)`` pairs) into Rows."""
    from pyspark.sql import Row

    binary = tuple(binary_features)
    rows = []
    for record in records:
        data = record[0] if isinstance(record, tuple) else record
        rows.append(Row(**from_example(data, binary)))
    return rows
