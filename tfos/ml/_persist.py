"""The Python state of tfos.ml's estimators and transformers on disk (driver).

Spark ML's metadata holds their params; what it cannot hold (``train_fn``, ``args``,
preprocess functions) is pickled with cloudpickle into a one-row Parquet file of one binary
column, ``<path>/state.parquet``, written and read with the DataFrame API, so a classic and
a Spark Connect session save and load alike. State saved by tfos before that, an RDD
``saveAsPickleFile`` at ``<path>/state``, still loads on a classic session.
"""

from __future__ import annotations

import os
from typing import Any

from pyspark.ml.util import MLWriter

#: Where the state lives under a saved instance's path; the older pickle-file state.
STATE, LEGACY_STATE = "state.parquet", "state"


def save_state(spark: Any, path: str, blob: bytes) -> None:
    """Writes ``blob`` (pickled state) under the instance directory ``path``."""
    spark.createDataFrame([(blob,)], "state binary").coalesce(1).write.parquet(os.path.join(path, STATE))


def load_state(spark: Any, path: str) -> bytes:
    """The pickled state saved under ``path``: the Parquet state, else the older pickle file."""
    from pyspark.errors import AnalysisException

    from tfos.driver._spark import backend

    try:
        rows = spark.read.parquet(os.path.join(path, STATE)).collect()
    except AnalysisException as exc:
        if "PATH_NOT_FOUND" not in str(exc):
            raise
        return backend(spark).read_pickle_file(os.path.join(path, LEGACY_STATE))[0]
    return bytes(rows[0].state)


class StateWriter(MLWriter):
    """An MLWriter whose ``overwrite()`` works on Spark Connect too (Spark's own reaches for the JVM)."""

    def _handleOverwrite(self, path: str) -> None:  # noqa: N802 - Spark ML's naming
        from tfos.driver._spark import is_connect

        if not is_connect(self.sparkSession):
            super()._handleOverwrite(path)
            return
        from pyspark.ml.connect.readwrite import RemoteMLWriter

        RemoteMLWriter.handleOverwrite(path, True)
