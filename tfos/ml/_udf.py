"""Column-appending batch functions for Spark ML transformers (driver builds; the function runs in executors).

A transformer that keeps its input columns and appends outputs runs as an iterator
Arrow UDF (``arrow_udf``, Spark 4.1+): only the columns it needs travel to Python,
every other column (vectors included) stays in the JVM, and one Python call sees every
batch of a partition, so a model loaded for the first batch serves the rest.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from tfos.errors import TFOSConfigError


def batch_udf(function: Callable[[Iterator[Any]], Iterator[Any]], return_type: Any) -> Any:
    """``function`` (an iterator of pyarrow arrays -> an iterator of arrays of the same lengths) as a UDF."""
    try:
        from pyspark.sql.functions import ArrowUDFType, arrow_udf
    except ImportError:
        import pyspark

        raise TFOSConfigError(f"tfos.ml transformers need pyspark 4.1 or later (arrow_udf); this is pyspark "
                              f"{pyspark.__version__}: pip install 'pyspark>=4.1,<5'") from None
    with warnings.catch_warnings():  # Spark prefers type hints, which a callable object cannot carry
        warnings.filterwarnings("ignore", message=".*type hints for arrow UDF.*")
        return arrow_udf(function, return_type, ArrowUDFType.SCALAR_ITER)


def list_column(values: np.ndarray, rows: list[int], total: int, arrow_type: Any) -> Any:
    """A list column of ``total`` rows: ``values[k]`` (flattened) at row ``rows[k]``, null elsewhere.

    Args:
        values: (len(rows), ...) array of results.
        rows: the row each result belongs to, ascending.
        total: rows in the column.
        arrow_type: the list type to produce.
    """
    import pyarrow as pa

    width = int(np.prod(values.shape[1:])) if values.ndim > 1 else 1
    present = np.zeros(total, dtype=bool)
    present[rows] = True
    lengths = np.where(present, width, 0)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = pa.array(np.asarray(values).reshape(-1)).cast(arrow_type.value_type)
    mask = None if present.all() else pa.array(~present)
    return pa.ListArray.from_arrays(pa.array(offsets), flat, mask=mask).cast(arrow_type)
