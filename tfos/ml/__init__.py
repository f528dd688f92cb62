"""Spark ML and TFRecord support (driver; parts run in executors).

``TFEstimator`` / ``TFModel`` put tfos training and SavedModel inference into Spark ML
pipelines; ``save_tfrecords`` / ``load_tfrecords`` move DataFrames to and from
TFRecord files of ``tf.train.Example``. Importing ``tfos.ml`` imports pyspark, not
TensorFlow.
"""

from tfos.ml._pipeline import Namespace, TFEstimator, TFModel, TFParams
from tfos.ml._tfrecord import from_example, infer_schema, load_tfrecords, loaded_from, save_tfrecords, to_example

__all__ = [
    "Namespace",
    "TFEstimator",
    "TFModel",
    "TFParams",
    "from_example",
    "infer_schema",
    "load_tfrecords",
    "loaded_from",
    "save_tfrecords",
    "to_example",
]
