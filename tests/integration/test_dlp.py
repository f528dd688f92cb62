"""Deep Learning Pipelines on real Spark: DeepFeaturizer, DeepPredictor and TFModel on tiny images and models."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

SIZE = 32
NAMES = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def spark(sc):
    from pyspark.sql import SparkSession

    return SparkSession.builder.getOrCreate()


def write_png(path, pixels):
    import tensorflow as tf

    with open(path, "wb") as f:
        f.write(tf.io.encode_png(pixels).numpy())


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """24 small PNGs (RGB 32x32, a few grayscale or of other sizes) whose dominant colour is the label."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for k in range(24):
        label = k % 3
        pixels = rng.integers(0, 90, size=(SIZE, SIZE, 3), dtype=np.uint8)
        pixels[..., label] += 160
        if k % 8 == 5:
            pixels = pixels[:40 - k % 7, :28]  # another size: resized on the executors
        if k % 8 == 7:
            pixels = pixels[..., :1]  # grayscale: repeated into RGB
        write_png(root / f"{NAMES[label]}-{k:02d}.png", pixels)
    return str(root)


def local_pixels(path, channels=3):
    """What the transformers should feed the model, computed here without tfos's helpers."""
    import tensorflow as tf

    image = tf.io.decode_image(open(path, "rb").read(), expand_animations=False)
    image = tf.cast(image, tf.float32)
    if image.shape[-1] == 1 and channels == 3:
        image = tf.image.grayscale_to_rgb(image)
    elif image.shape[-1] == 3 and channels == 1:
        image = tf.image.rgb_to_grayscale(image)
    if image.shape[:2] != (SIZE, SIZE):
        image = tf.image.resize(image, (SIZE, SIZE))
    return image.numpy()


def local_batch(root, channels=3):
    files = sorted(os.listdir(root))
    return files, np.stack([local_pixels(os.path.join(root, f), channels) for f in files])


@pytest.fixture(scope="module")
def keras3_model(tmp_path_factory):
    """A Keras 3 classifier with its own Rescaling layer, saved as .keras."""
    import keras

    keras.utils.set_random_seed(1)
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Rescaling(1 / 255, name="rescaling")(inputs)  # not rescaling_1 after other tests' models
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="probs")(x)
    model = keras.Model(inputs, outputs)
    path = str(tmp_path_factory.mktemp("k3") / "classifier.keras")
    model.save(path)
    return path


@pytest.fixture(scope="module")
def tf_keras_model(tmp_path_factory):
    """A tf-keras (Keras 2) grayscale model, saved as a SavedModel directory."""
    import tf_keras

    tf_keras.utils.set_random_seed(2)
    model = tf_keras.Sequential([
        tf_keras.Input((SIZE, SIZE, 1)),
        tf_keras.layers.Conv2D(3, 3, activation="relu", name="conv"),
        tf_keras.layers.Flatten(name="flat"),
        tf_keras.layers.Dense(3, activation="softmax", name="probs"),
    ])
    path = str(tmp_path_factory.mktemp("k2") / "gray_savedmodel")
    model.save(path, save_format="tf")
    return path


def by_name(rows, path_field, value):
    return {os.path.basename(getattr(r, path_field)): np.asarray(getattr(r, value).toArray()
                                                                 if hasattr(getattr(r, value), "toArray")
                                                                 else getattr(r, value)) for r in rows}


def test_featurizer_on_image_source_and_binary_files_matches_keras_and_chains(spark, images, keras3_model,
                                                                               tmp_path):
    import keras
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import functions as F

    from tfos.ml import DeepFeaturizer

    model = keras.models.load_model(keras3_model)
    files, batch = local_batch(images)
    expected = dict(zip(files, keras.Model(model.input, model.get_layer("pool").output)(batch).numpy()))

    featurizer = DeepFeaturizer(inputCol="image", outputCol="features", modelPath=keras3_model, batchSize=5)
    source = spark.read.format("image").load(images).repartition(3)
    out = featurizer.transform(source)
    assert out.columns == ["image", "features"] and isinstance(out.schema["features"].dataType, VectorUDT)
    got = {os.path.basename(r.image.origin): r.features.toArray() for r in out.collect()}
    assert sorted(got) == files
    for name in files:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-5)

    binary = spark.read.format("binaryFile").load(images)
    out = featurizer.setInputCol("content").transform(binary)
    assert out.columns == ["path", "modificationTime", "length", "content", "features"]
    got = by_name(out.collect(), "path", "features")
    for name in files:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-5)

    # transfer learning: the vectors go straight into LogisticRegression, in a persisted Pipeline
    labelled = binary.withColumn("label", F.when(F.col("path").contains("red-"), 0.0)
                                 .when(F.col("path").contains("green-"), 1.0).otherwise(2.0))
    pipeline = Pipeline(stages=[featurizer.copy().setPreprocess(lambda b: b * 1.0),
                                LogisticRegression(maxIter=20)])
    fitted = pipeline.fit(labelled)
    fitted.write().overwrite().save(str(tmp_path / "pipeline"))
    again = PipelineModel.load(str(tmp_path / "pipeline"))
    assert again.stages[0].getPreprocess() is not None and again.stages[0].getModelPath() == keras3_model
    first = sorted((r.path, r.prediction) for r in fitted.transform(labelled).collect())
    assert first == sorted((r.path, r.prediction) for r in again.transform(labelled).collect())


def test_predictor_on_binary_files_runs_a_tf_keras_grayscale_savedmodel_with_top_k(spark, images, tf_keras_model):
    import tf_keras

    from tfos.ml import DeepPredictor

    files, batch = local_batch(images, channels=1)
    expected = dict(zip(files, tf_keras.models.load_model(tf_keras_model)(batch, training=False).numpy()))

    predictor = DeepPredictor(inputCol="content", outputCol="probs", modelPath=tf_keras_model, topK=2,
                              labels=NAMES)
    out = predictor.transform(spark.read.format("binaryFile").load(images).select("path", "content"))
    assert out.columns == ["path", "content", "probs", "topK"]
    assert dict(out.dtypes)["probs"] == "array<double>"
    rows = out.collect()
    got = by_name(rows, "path", "probs")
    for name in files:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-6)
    for row in rows:
        probs = expected[os.path.basename(row.path)]
        best = np.argsort(-probs)[:2]
        assert [t.label for t in row.topK] == [NAMES[i] for i in best]
        assert [t.probability for t in row.topK] == pytest.approx(probs[best], rel=1e-4)

    # the same model through Spark's image source (BGR structs) gives the same numbers
    structs = DeepPredictor(inputCol="image", outputCol="probs", modelPath=tf_keras_model) \
        .transform(spark.read.format("image").load(images)).collect()
    for row in structs:
        np.testing.assert_allclose(row.probs, expected[os.path.basename(row.image.origin)], rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    """One picture as PNG, JPEG, GIF and BMP (8x8 blocks of four colours), and its RGB pixels."""
    from PIL import Image

    palette = np.array([[250, 12, 12], [12, 250, 12], [12, 12, 250], [240, 240, 20]], dtype=np.uint8)
    blocks = np.random.default_rng(3).integers(0, 4, size=(SIZE // 8, SIZE // 8))
    index = blocks.repeat(8, axis=0).repeat(8, axis=1).astype(np.uint8)
    rgb = palette[index]
    root = tmp_path_factory.mktemp("formats")
    Image.fromarray(rgb).save(root / "picture.png")
    Image.fromarray(rgb).save(root / "picture.jpg", quality=100, subsampling=0)  # lossy, but close on flat blocks
    indexed = Image.fromarray(index, mode="P")
    indexed.putpalette(palette.reshape(-1).tolist())
    indexed.save(root / "picture.gif")
    Image.fromarray(rgb).save(root / "picture.bmp")
    return str(root), rgb.astype(np.float32)


def test_jpeg_gif_and_bmp_reach_the_model_as_rgb_pixels_and_preprocess_runs_first(spark, formats, tmp_path):
    """An identity model shows what the transformers feed: the file's RGB pixels in 0-255, then preprocess."""
    import keras

    from tfos.ml import DeepPredictor

    root, rgb = formats
    identity = str(tmp_path / "identity.keras")
    keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Flatten()]).save(identity)
    predictor = DeepPredictor(inputCol="content", outputCol="pixels", modelPath=identity)
    binary = spark.read.format("binaryFile").load(root)
    source = spark.read.format("image").load(root)  # Java's ImageIO decodes these, tfos flips BGR to RGB
    for out, path in ((predictor.transform(binary), "path"),
                      (predictor.copy().setInputCol("image").transform(source), "image")):
        rows = out.collect()
        got = {os.path.splitext(os.path.basename(r.path if path == "path" else r.image.origin))[1]:
               np.array(r.pixels, dtype=np.float32).reshape(SIZE, SIZE, 3) for r in rows}
        assert sorted(got) == [".bmp", ".gif", ".jpg", ".png"]
        for ext in (".bmp", ".gif", ".png"):
            np.testing.assert_array_equal(got[ext], rgb, err_msg=f"{ext} via {path}")
        assert np.abs(got[".jpg"] - rgb).mean() < 2 and np.abs(got[".jpg"] - rgb).max() < 24

    halved = predictor.copy().setPreprocess(lambda batch: batch / 2)
    halved.write().overwrite().save(str(tmp_path / "predictor"))
    loaded = DeepPredictor.load(str(tmp_path / "predictor"))  # the preprocess function is saved with it
    rows = loaded.transform(binary.where(binary.path.endswith(".png"))).collect()
    assert len(rows) == 1
    np.testing.assert_array_equal(np.array(rows[0].pixels).reshape(SIZE, SIZE, 3), rgb / 2)


def test_bad_image_names_its_path_or_fills_error_col(spark, images, keras3_model, tmp_path):
    from tfos.ml import DeepPredictor

    root = tmp_path / "mixed"
    root.mkdir()
    for name in sorted(os.listdir(images))[:3]:
        shutil.copy(os.path.join(images, name), root / name)
    (root / "broken.png").write_bytes(b"\x89PNG not really an image")

    binary = spark.read.format("binaryFile").load(str(root))
    predictor = DeepPredictor(inputCol="content", outputCol="probs", modelPath=keras3_model)
    with pytest.raises(Exception, match=r"image file:\S*broken\.png could not be used: TensorFlow cannot decode"):
        predictor.transform(binary).collect()

    rows = predictor.setErrorCol("error").transform(binary).collect()
    broken = [r for r in rows if r.path.endswith("broken.png")]
    assert len(rows) == 4 and len(broken) == 1
    assert broken[0].probs is None and "broken.png" in broken[0].error and "cannot decode" in broken[0].error
    assert all(r.error is None and len(r.probs) == 3 for r in rows if r is not broken[0])

    source = spark.read.format("image").option("dropInvalid", False).load(str(root))
    rows = predictor.setInputCol("image").transform(source).collect()
    bad = [r for r in rows if r.image.origin.endswith("broken.png")]
    assert len(bad) == 1 and bad[0].probs is None and "image source could not decode it" in bad[0].error


def test_unknown_layer_lists_the_models_layers(spark, images, keras3_model):
    from tfos.ml import DeepFeaturizer

    df = spark.read.format("binaryFile").load(images).limit(2)
    with pytest.raises(Exception, match=r"has no layer 'nope'; its layers are \['image', 'rescaling', 'conv', "
                                        r"'pool', 'probs'\]"):
        DeepFeaturizer(inputCol="content", modelPath=keras3_model, layer="nope").transform(df).collect()
    conv = DeepFeaturizer(inputCol="content", modelPath=keras3_model, layer="conv").transform(df).collect()
    assert len(conv[0].features) == 30 * 30 * 4  # the layer's output, flattened


def test_a_model_of_two_outputs_is_refused_by_the_predictor(spark, images, tmp_path):
    import keras

    from tfos.ml import DeepPredictor

    inputs = keras.Input((SIZE, SIZE, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    path = str(tmp_path / "two.keras")
    keras.Model(inputs, [keras.layers.Dense(2, name="a")(pooled), keras.layers.Dense(3, name="b")(pooled)]).save(path)
    df = spark.read.format("binaryFile").load(images).limit(2)
    with pytest.raises(Exception, match=r"two\.keras has 2 outputs \['a', 'b'\]; set outputName to the one"):
        DeepPredictor(inputCol="content", modelPath=path).transform(df).collect()
    # outputName picks one: the same numbers as that output of the model run locally
    local = keras.models.load_model(path)
    rows = DeepPredictor(inputCol="content", modelPath=path, outputName="b").transform(df).collect()
    pixels = np.stack([local_pixels(r.path[len("file:"):]) for r in rows])
    np.testing.assert_allclose([r.prediction for r in rows], np.asarray(local(pixels)[1]), rtol=1e-5, atol=1e-6)


def two_output_signatures(tmp_path):
    """A SavedModel (not Keras) whose serving signature gives logits and probabilities, and an 'embed' signature."""
    import tensorflow as tf

    weights = tf.constant(np.random.default_rng(5).normal(size=(3, 3)), tf.float32)
    spec = tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32, name="pixels")

    class Classifier(tf.Module):
        @tf.function(input_signature=[spec])
        def serve(self, pixels):
            logits = tf.matmul(tf.reduce_mean(pixels, axis=[1, 2]) / 255.0, weights)
            return {"logits": logits, "probabilities": tf.nn.softmax(logits)}

        @tf.function(input_signature=[spec])
        def embed(self, pixels):
            return {"embedding": tf.reduce_max(pixels, axis=[1, 2]) / 255.0}

    module = Classifier()
    path = str(tmp_path / "two_outputs")
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve, "embed": module.embed})
    return path


def test_savedmodel_signature_and_output_are_chosen_never_guessed(spark, images, tmp_path):
    """sparkdl let users name the signature and output; a signature of several outputs needs outputName."""
    import tensorflow as tf

    from tfos.ml import DeepFeaturizer, DeepPredictor

    path = two_output_signatures(tmp_path)
    files, batch = local_batch(images)
    loaded = tf.saved_model.load(path)
    served = loaded.signatures["serving_default"](pixels=tf.constant(batch))
    probabilities = dict(zip(files, served["probabilities"].numpy()))
    embedding = dict(zip(files, loaded.signatures["embed"](pixels=tf.constant(batch))["embedding"].numpy()))
    binary = spark.read.format("binaryFile").load(images).select("path", "content")

    with pytest.raises(Exception, match=r"signature 'serving_default' of model \S+two_outputs has 2 outputs "
                                        r"\['logits', 'probabilities'\]; set outputName"):
        DeepPredictor(inputCol="content", modelPath=path, topK=2).transform(binary).collect()

    rows = DeepPredictor(inputCol="content", modelPath=path, outputName="probabilities", topK=2,
                         labels=NAMES).transform(binary).collect()
    got = by_name(rows, "path", "prediction")
    assert sorted(got) == files
    for row in rows:
        expected = probabilities[os.path.basename(row.path)]
        np.testing.assert_allclose(row.prediction, expected, rtol=1e-5, atol=1e-6)
        assert [t.probability for t in row.topK] == pytest.approx(np.sort(expected)[::-1][:2], rel=1e-5)

    featurizer = DeepFeaturizer(inputCol="content", modelPath=path, signatureDefKey="embed")
    got = by_name(featurizer.transform(binary).collect(), "path", "features")
    for name in files:
        np.testing.assert_allclose(got[name], embedding[name], rtol=1e-5, atol=1e-6)
    logits = by_name(featurizer.setSignatureDefKey("serving_default").setOutputName("logits").transform(binary)
                     .collect(), "path", "features")
    for name, value in zip(files, served["logits"].numpy()):
        np.testing.assert_allclose(logits[name], value, rtol=1e-5, atol=1e-6)

    with pytest.raises(Exception, match=r"has no output 'probs'; its outputs are \['logits', 'probabilities'\]"):
        DeepPredictor(inputCol="content", modelPath=path, outputName="probs").transform(binary).collect()
    with pytest.raises(Exception, match=r"has no signature 'serve'; it has \['embed', 'serving_default'\]"):
        DeepPredictor(inputCol="content", modelPath=path, signatureDefKey="serve").transform(binary).collect()


def test_image_loader_reproduces_a_users_own_load_and_resize(spark, images, keras3_model, tmp_path):
    """sparkdl's imageLoader: the user's own loading and resizing, run on the executors, reaches the model as is."""
    import io

    import keras

    from tfos.ml import DeepFeaturizer, DeepPredictor

    root = tmp_path / "small"
    root.mkdir()
    rng = np.random.default_rng(6)
    for k in range(5):  # 24x24 files for a 32x32 model: Keras' nearest-neighbour resize, not tfos's bilinear one
        write_png(root / f"small-{k}.png", rng.integers(0, 256, size=(24, 24, 3), dtype=np.uint8))
    (root / "broken.png").write_bytes(b"not an image")

    def load_path(path):
        img = keras.utils.load_img(path, target_size=(SIZE, SIZE))
        return keras.utils.img_to_array(img)

    def load_bytes(data):
        return keras.utils.img_to_array(keras.utils.load_img(io.BytesIO(data), target_size=(SIZE, SIZE)))[None]

    model = keras.models.load_model(keras3_model)
    paths = sorted(str(p) for p in root.glob("small-*.png"))
    expected = dict(zip(paths, np.asarray(model(np.stack([load_path(p) for p in paths])))))

    df = spark.createDataFrame([(p,) for p in paths], ["file"]).repartition(2)
    rows = DeepPredictor(inputCol="file", modelPath=keras3_model, imageLoader=load_path).transform(df).collect()
    assert sorted(r.file for r in rows) == paths
    for row in rows:
        np.testing.assert_allclose(row.prediction, expected[row.file], rtol=1e-5, atol=1e-6)

    binary = spark.read.format("binaryFile").load(str(root))
    predictor = DeepPredictor(inputCol="content", modelPath=keras3_model, imageLoader=load_bytes, errorCol="error")
    rows = predictor.transform(binary).collect()
    assert len(rows) == 6
    for row in rows:
        if row.path.endswith("broken.png"):
            assert row.prediction is None and "broken.png could not be used: imageLoader raised" in row.error
        else:
            np.testing.assert_allclose(row.prediction, expected[row.path[len("file:"):]], rtol=1e-5, atol=1e-6)

    features = DeepFeaturizer(inputCol="file", modelPath=keras3_model, imageLoader=load_path).transform(df)
    pool = keras.Model(model.input, model.get_layer("pool").output)
    local = dict(zip(paths, np.asarray(pool(np.stack([load_path(p) for p in paths])))))
    for row in features.collect():
        np.testing.assert_allclose(row.features.toArray(), local[row.file], rtol=1e-5, atol=1e-6)

    def wrong_size(path):
        return np.zeros((SIZE, SIZE + 1, 3))

    with pytest.raises(Exception, match=r"small-\d\.png could not be used: imageLoader returned an array of shape "
                                        r"\(32, 33, 3\); the model takes \(32, 32, 3\)"):
        DeepPredictor(inputCol="file", modelPath=keras3_model, imageLoader=wrong_size).transform(df).collect()


def test_missing_weights_and_bad_settings_fail_on_the_driver_before_any_job(sc, spark, images, tmp_path):
    from tfos.errors import TFOSConfigError
    from tfos.ml import DeepFeaturizer, DeepPredictor

    df = spark.read.format("image").load(images)
    missing = str(tmp_path / "mobilenet_v2.weights.h5")
    sc.setJobGroup("dlp-before-any-job", "must stay empty")
    try:
        with pytest.raises(TFOSConfigError, match=f"weightsPath {missing} .* does not exist: provide the file"):
            DeepFeaturizer(modelName="MobileNetV2", weightsPath=missing).transform(df)
        with pytest.raises(TFOSConfigError, match="modelName 'MobileNetV2' needs weightsPath"):
            DeepPredictor(modelName="MobileNetV2").transform(df)
        with pytest.raises(TFOSConfigError, match="'ResNet9000' is not a known keras.applications architecture"):
            DeepPredictor(modelName="ResNet9000", weightsPath=missing).transform(df)
        with pytest.raises(TFOSConfigError, match="set exactly one of modelPath"):
            DeepPredictor().transform(df)
        with pytest.raises(TFOSConfigError, match="modelPath .*nowhere.keras does not exist"):
            DeepPredictor(modelPath=str(tmp_path / "nowhere.keras")).transform(df)
        with pytest.raises(TFOSConfigError, match="inputCol 'pixels' is not a column"):
            DeepPredictor(inputCol="pixels", modelName="VGG16", weightsPath=images).transform(df)
        with pytest.raises(TFOSConfigError, match="has type string; expected the struct"):
            DeepPredictor(inputCol="origin", modelName="VGG16", weightsPath=images).transform(
                df.select("image.origin"))
        assert list(sc.statusTracker().getJobIdsForGroup("dlp-before-any-job")) == []
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)


def probe_loads(path):
    """An Arrow UDF reporting, from the Python workers that run Arrow UDFs, how often they loaded ``path``."""

    def report(batches):
        import os

        import pyarrow as pa

        from tfos.ml._models import LOADS

        for batch in batches:
            yield pa.array([f"{os.getpid()}:{LOADS.get(path, 0)}"] * len(batch))

    return report


def test_each_python_worker_loads_the_model_once_across_partitions_and_jobs(sc, spark, images, keras3_model,
                                                                             tmp_path):
    from pyspark.sql import functions as F

    from tfos.ml import DeepFeaturizer
    from tfos.ml._udf import batch_udf

    path = str(tmp_path / "fresh.keras")  # a path no worker has loaded yet
    shutil.copy(keras3_model, path)
    df = spark.read.format("binaryFile").load(images).repartition(8)
    featurizer = DeepFeaturizer(inputCol="content", modelPath=path, batchSize=4)
    assert featurizer.transform(df).count() == 24
    assert len(featurizer.transform(df).collect()) == 24  # a second job, 8 more partitions
    probe = batch_udf(probe_loads(path), "string")
    seen = {}
    for row in spark.range(0, 16, 1, 16).select(probe(F.col("id")).alias("r")).collect():
        pid, loads = row.r.split(":")
        seen[pid] = int(loads)
    loaded = {pid: n for pid, n in seen.items() if n}
    assert loaded and set(loaded.values()) == {1} and len(loaded) <= 2, seen  # 16 partitions, at most 2 loads


def test_model_name_builds_the_architecture_from_a_weights_file(spark, images, tmp_path):
    import keras

    from tfos.ml import DeepFeaturizer

    args = {"input_shape": [SIZE, SIZE, 3], "alpha": 0.35, "classes": 3}
    keras.utils.set_random_seed(3)
    model = keras.applications.MobileNetV2(weights=None, **args)
    weights = str(tmp_path / "mobilenet_v2.weights.h5")
    model.save_weights(weights)
    files, batch = local_batch(images)
    inner = keras.Model(model.input, model.layers[-2].output)
    expected = dict(zip(files, inner(keras.applications.mobilenet_v2.preprocess_input(batch)).numpy()))

    out = DeepFeaturizer(inputCol="content", modelName="MobileNetV2", weightsPath=weights, modelArgs=args) \
        .transform(spark.read.format("binaryFile").load(images)).collect()
    got = by_name(out, "path", "features")
    assert sorted(got) == files and got[files[0]].shape == (1280,)
    for name in files:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-3, atol=1e-4)


def argmax_module(tmp_path):
    """A SavedModel: prediction (double) and probabilities of a fixed linear classifier on x (2 features)."""
    import tensorflow as tf

    weights = tf.constant([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]])

    class Classifier(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
        def serve(self, x):
            logits = tf.matmul(x, weights)
            return {"prediction": tf.cast(tf.argmax(logits, axis=1), tf.float64),
                    "probs": tf.nn.softmax(logits)}

    module = Classifier()
    path = str(tmp_path / "classifier")
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    return path, weights.numpy()


def test_tf_model_keeps_columns_reads_signature_on_driver_and_feeds_the_evaluator(sc, spark, tmp_path):
    import keras
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator
    from pyspark.ml.feature import VectorAssembler

    from tfos.compat.pipeline import TFModel as CompatTFModel
    from tfos.ml import TFModel

    export_dir, weights = argmax_module(tmp_path)
    rng = np.random.default_rng(4)
    xy = rng.normal(size=(60, 2))
    labels = np.argmax(xy @ weights, axis=1).astype(float)
    labels[:6] = (labels[:6] + 1) % 3  # 6 of 60 wrong: accuracy 0.9
    df = VectorAssembler(inputCols=["a", "b"], outputCol="features").transform(
        spark.createDataFrame([(float(a), float(b), float(y)) for (a, b), y in zip(xy, labels)],
                              ["a", "b", "label"]).repartition(3))
    model = TFModel({}).setInputMapping({"features": "x"}).setOutputMapping(
        {"prediction": "prediction", "probs": "probability"}).setExportDir(export_dir).setBatchSize(7)
    sc.setJobGroup("dlp-tfmodel-transform", "transform reads the signature on the driver")
    try:
        out = model.transform(df)
        assert list(sc.statusTracker().getJobIdsForGroup("dlp-tfmodel-transform")) == []
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    assert out.columns == ["a", "b", "label", "features", "prediction", "probability"]
    assert dict(out.dtypes)["prediction"] == "double" and dict(out.dtypes)["probability"] == "array<double>"
    accuracy = MulticlassClassificationEvaluator(metricName="accuracy").evaluate(out)
    assert accuracy == pytest.approx(0.9)
    row = out.orderBy("a").first()
    assert row.features.toArray().tolist() == [row.a, row.b]  # the vector column went through untouched

    compat = CompatTFModel({}).setInputMapping({"features": "x"}).setOutputMapping({"prediction": "p"}) \
        .setExportDir(export_dir)
    assert compat.transform(df).columns == ["p"]  # TensorFlowOnSpark's behaviour stays in compat

    # a Keras 3 model file works the same way; its inputs and outputs are named by its layers
    inputs = keras.Input((2,), name="x")
    dense = keras.layers.Dense(3, name="scores")
    keras_model = keras.Model(inputs, dense(inputs))
    keras_path = str(tmp_path / "scores.keras")
    keras_model.save(keras_path)
    scored = TFModel({}).setInputMapping({"features": "x"}).setOutputMapping({"scores": "scores"}) \
        .setExportDir(keras_path).transform(df)
    rows = scored.collect()
    local = keras_model(np.array([r.features.toArray() for r in rows], dtype=np.float32)).numpy()
    np.testing.assert_allclose(np.array([r.scores for r in rows]), local, rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match=r"output_mapping names output 'nope', but the Keras model gives \['scores'\]"):
        TFModel({}).setInputMapping({"features": "x"}).setOutputMapping({"nope": "n"}).setExportDir(keras_path) \
            .transform(df)
