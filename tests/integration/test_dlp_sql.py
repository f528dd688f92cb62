"""Models as SQL functions (register_model_udf) and on Structured Streaming: SQL function, TFModel, DeepFeaturizer."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

SIZE = 8


@pytest.fixture(scope="module")
def spark(sc):
    from pyspark.sql import SparkSession

    return SparkSession.builder.getOrCreate()


def write_pngs(root, first, count):
    """Grayscale 8x8 PNGs named by index; returns their pixels (count, 8, 8, 1) uint8."""
    import tensorflow as tf

    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(first)
    pixels = rng.integers(0, 256, size=(count, SIZE, SIZE, 1), dtype=np.uint8)
    for k in range(count):
        data = tf.io.encode_png(pixels[k]).numpy()
        tmp = os.path.join(os.path.dirname(root), f".tmp-{first + k}.png")
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, os.path.join(root, f"img-{first + k:03d}.png"))  # whole files only, as a stream needs
    return pixels


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny Keras 3 classifier on 8x8 grayscale images, and a head model on its 3 outputs."""
    import keras

    keras.utils.set_random_seed(3)
    root = tmp_path_factory.mktemp("models")
    inputs = keras.Input((SIZE, SIZE, 1), name="image")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(2, 3, activation="relu", name="conv")(x)
    x = keras.layers.Flatten(name="flat")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="probs")(x)
    classifier = keras.Model(inputs, outputs)
    head = keras.Sequential([keras.Input((3,), name="x"), keras.layers.Dense(2, name="y")])
    paths = str(root / "classifier.keras"), str(root / "head.keras")
    classifier.save(paths[0])
    head.save(paths[1])
    return paths


def local_outputs(models, pixels):
    import keras

    classifier, head = (keras.models.load_model(p) for p in models)
    batch = pixels.astype(np.float32)
    probs = np.asarray(classifier(batch))
    flat = np.asarray(keras.Model(classifier.inputs, classifier.get_layer("flat").output)(batch))
    return probs, flat, np.asarray(head(probs))


def test_sql_function_on_image_binary_and_array_columns(spark, models, tmp_path):
    from tfos.ml import register_model_udf

    root = str(tmp_path / "images")
    pixels = write_pngs(root, 0, 6)
    probs, flat, heads = local_outputs(models, pixels)
    register_model_udf(spark, "digit_probs", models[0])
    register_model_udf(spark, "digit_bytes", models[0], input="binary", batch_size=4)
    register_model_udf(spark, "digit_features", models[0], input="binary", layer="default")
    register_model_udf(spark, "head", models[1], input="array")
    spark.read.format("image").load(root).createOrReplaceTempView("images")
    spark.read.format("binaryFile").load(root).createOrReplaceTempView("files")

    rows = spark.sql("SELECT image.origin AS path, digit_probs(image) AS p FROM images").collect()
    got = {os.path.basename(r.path): r.p for r in rows}
    assert sorted(got) == [f"img-{k:03d}.png" for k in range(6)]
    np.testing.assert_allclose([got[f"img-{k:03d}.png"] for k in range(6)], probs, rtol=1e-4, atol=1e-5)

    rows = spark.sql("SELECT path, digit_bytes(content) AS p, digit_features(content) AS f FROM files").collect()
    by_name = {os.path.basename(r.path): r for r in rows}
    order = [by_name[f"img-{k:03d}.png"] for k in range(6)]
    np.testing.assert_allclose([r.p for r in order], probs, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([r.f for r in order], flat, rtol=1e-4, atol=1e-5)

    rows = spark.sql("SELECT path, head(digit_bytes(content)) AS h FROM files").collect()
    by_name = {os.path.basename(r.path): r.h for r in rows}
    np.testing.assert_allclose([by_name[f"img-{k:03d}.png"] for k in range(6)], heads, rtol=1e-4, atol=1e-4)


def test_sql_function_from_keras_model_objects(spark, models, tmp_path):
    """sparkdl's registerKerasImageUDF(name, model): an in-memory model, saved and shipped behind the scenes."""
    import keras
    import tf_keras

    from tfos.ml import register_model_udf

    root = str(tmp_path / "images")
    pixels = write_pngs(root, 20, 5)
    probs, flat, heads = local_outputs(models, pixels)
    classifier, head = (keras.models.load_model(p) for p in models)
    register_model_udf(spark, "object_probs", classifier, input="binary", batch_size=2)
    register_model_udf(spark, "object_flat", classifier, input="binary", layer="flat")
    register_model_udf(spark, "object_head", head, input="array")  # input shape read from the object
    tf_keras.utils.set_random_seed(4)
    legacy = tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(2, name="y")])
    register_model_udf(spark, "legacy_head", legacy, input="array")
    spark.read.format("binaryFile").load(root).createOrReplaceTempView("object_files")

    rows = spark.sql("SELECT path, object_probs(content) AS p, object_flat(content) AS f, "
                     "object_head(object_probs(content)) AS h, legacy_head(object_probs(content)) AS l "
                     "FROM object_files").collect()
    by_name = {os.path.basename(r.path): r for r in rows}
    order = [by_name[f"img-{k:03d}.png"] for k in range(20, 25)]
    np.testing.assert_allclose([r.p for r in order], probs, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([r.f for r in order], flat, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([r.h for r in order], heads, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose([r.l for r in order], legacy(probs.astype(np.float32)).numpy(), rtol=1e-4, atol=1e-4)


def test_sql_function_names_a_bad_file_by_its_path_without_mentioning_error_col(spark, models, tmp_path):
    from tfos.ml import register_model_udf

    root = str(tmp_path / "images")
    pixels = write_pngs(root, 30, 2)
    with open(os.path.join(root, "broken.png"), "wb") as f:
        f.write(b"\x89PNG not really")
    probs, _, _ = local_outputs(models, pixels)
    register_model_udf(spark, "checked_bytes", models[0], input="binary")
    spark.read.format("binaryFile").load(root).createOrReplaceTempView("checked_files")

    with pytest.raises(Exception) as unnamed:
        spark.sql("SELECT checked_bytes(content) FROM checked_files").collect()
    message = str(unnamed.value)
    assert "could not be used: TensorFlow cannot decode" in message and "errorCol" not in message
    assert "checked_bytes(struct(content, path))" in message  # how to have the file named

    with pytest.raises(Exception) as named:
        spark.sql("SELECT checked_bytes(struct(content, path)) FROM checked_files").collect()
    message = str(named.value)
    assert re.search(r"image file:\S*/broken\.png could not be used: TensorFlow cannot decode", message), message
    assert "errorCol" not in message

    rows = spark.sql("SELECT path, checked_bytes(struct(content, path)) AS p FROM checked_files "
                     "WHERE path NOT LIKE '%broken.png'").collect()
    got = {os.path.basename(r.path): r.p for r in rows}
    np.testing.assert_allclose([got["img-030.png"], got["img-031.png"]], probs, rtol=1e-4, atol=1e-5)


def test_sql_function_names_the_bad_setting(spark, models):
    from tfos.errors import TFOSConfigError
    from tfos.ml import register_model_udf

    with pytest.raises(TFOSConfigError, match="input must be one of"):
        register_model_udf(spark, "nope", models[0], input="tensor")


def test_stream_of_image_files_scored_exactly_once_across_triggers_and_a_restart(spark, models, tmp_path):
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F
    from pyspark.sql.types import BinaryType, LongType, StringType, StructField, StructType, TimestampType

    from tfos.ml import DeepFeaturizer, TFModel, register_model_udf

    register_model_udf(spark, "stream_probs", models[0], input="binary")
    source, sink, checkpoint = (str(tmp_path / n) for n in ("incoming", "scored", "checkpoint"))
    os.makedirs(source)
    schema = StructType([StructField("path", StringType()), StructField("modificationTime", TimestampType()),
                         StructField("length", LongType()), StructField("content", BinaryType())])

    def start():
        stream = spark.readStream.format("binaryFile").schema(schema).option("pathGlobFilter", "*.png").load(source)
        scored = stream.select("path", "content", F.expr("stream_probs(content)").alias("probs"))
        scored = DeepFeaturizer(inputCol="content", outputCol="features", modelPath=models[0]).transform(scored)
        scored = (TFModel().setExportDir(models[1]).setInputMapping({"probs": "x"})
                  .setOutputMapping({"y": "head"}).transform(scored))
        return (scored.drop("content").writeStream.format("parquet").option("path", sink)
                .option("checkpointLocation", checkpoint).start())

    pixels = [write_pngs(source, 0, 2)]
    query = start()
    query.processAllAvailable()  # trigger 1
    pixels.append(write_pngs(source, 2, 2))
    query.processAllAvailable()  # trigger 2
    query.stop()
    pixels.append(write_pngs(source, 4, 2))
    query = start()  # a restart from the checkpoint: only the new files
    query.processAllAvailable()
    query.stop()

    out = spark.read.parquet(sink).withColumn("features", vector_to_array("features")).collect()
    names = sorted(os.path.basename(r.path) for r in out)
    assert names == [f"img-{k:03d}.png" for k in range(6)]  # each file once: none lost, none twice
    probs, flat, heads = local_outputs(models, np.concatenate(pixels))
    by_name = {os.path.basename(r.path): r for r in out}
    order = [by_name[n] for n in names]
    np.testing.assert_allclose([r.probs for r in order], probs, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([r.features for r in order], flat, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([r.head for r in order], heads, rtol=1e-4, atol=1e-4)
