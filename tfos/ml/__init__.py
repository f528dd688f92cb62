"""Spark ML and TFRecord support (driver; parts run in executors).

``TFEstimator`` / ``TFModel`` put tfos training and SavedModel / Keras inference into
Spark ML pipelines; ``DeepFeaturizer`` / ``DeepPredictor`` run Keras models on image
columns (Spark's ``image`` source or ``binaryFile`` bytes); ``save_tfrecords`` /
``load_tfrecords`` move DataFrames to and from TFRecord files of ``tf.train.Example``;
``register_model_udf`` makes a model a SQL function (batch and streaming queries);
``TFEstimator.fitMultiple`` trains a tuning grid's trials in parallel (CrossValidator).
Importing ``tfos.ml`` imports pyspark, not TensorFlow.
"""

from tfos.ml._deep import DeepFeaturizer, DeepPredictor
from tfos.ml._pipeline import Namespace, TFEstimator, TFModel, TFParams
from tfos.ml._sql import register_model_udf
from tfos.ml._tfrecord import from_example, infer_schema, load_tfrecords, loaded_from, save_tfrecords, to_example

__all__ = [
    "DeepFeaturizer",
    "DeepPredictor",
    "Namespace",
    "TFEstimator",
    "TFModel",
    "TFParams",
    "from_example",
    "infer_schema",
    "load_tfrecords",
    "loaded_from",
    "register_model_udf",
    "save_tfrecords",
    "to_example",
]
