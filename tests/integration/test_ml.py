"""tfos.ml and its compat wrappers on real Spark: TFRecords, Spark ML pipelines, reservation, TFoS examples."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests.integration.test_cluster import load_script


@pytest.fixture(scope="module")
def spark(sc):
    from pyspark.sql import SparkSession

    return SparkSession.builder.getOrCreate()


def typed_frame(spark, rows=50):
    from pyspark.ml.linalg import Vectors, VectorUDT
    from pyspark.sql.types import (
        ArrayType,
        BinaryType,
        BooleanType,
        DoubleType,
        FloatType,
        IntegerType,
        LongType,
        StringType,
        StructField,
        StructType,
    )

    schema = StructType([
        StructField("i", IntegerType()), StructField("l", LongType()), StructField("f", FloatType()),
        StructField("d", DoubleType()), StructField("b", BooleanType()), StructField("s", StringType()),
        StructField("bin", BinaryType()), StructField("arr", ArrayType(DoubleType())),
        StructField("iarr", ArrayType(LongType())), StructField("v", VectorUDT()),
    ])
    data = [(k, 10 ** 12 + k, k / 4, k / 3, k % 2 == 0, f"row {k} é", bytes([k, 255]), [k + 0.5, -1.0 * k, 2.0],
             [k, k * k], Vectors.dense([k, 1.5])) for k in range(rows)]
    return spark.createDataFrame(data, schema).repartition(3)


def test_tfrecords_round_trip_keeps_every_value(spark, tmp_path):
    from tfos.ml import load_tfrecords, loaded_from, save_tfrecords

    out = str(tmp_path / "records")
    assert save_tfrecords(typed_frame(spark), out) == 50
    assert sorted(p for p in os.listdir(out) if p.startswith("part-")) == ["part-r-00000", "part-r-00001",
                                                                          "part-r-00002"]
    df = load_tfrecords(spark, out, binary_features=["bin"])
    assert loaded_from(df) == out
    assert dict(df.dtypes) == {"arr": "array<double>", "b": "bigint", "bin": "binary", "d": "double",
                               "f": "double", "i": "bigint", "iarr": "array<bigint>", "l": "bigint", "s": "string",
                               "v": "array<double>"}
    rows = sorted(df.collect(), key=lambda r: r.i)
    assert len(rows) == 50
    k = 7
    row = rows[k]
    assert (row.i, row.l, row.b, row.s, bytes(row.bin)) == (k, 10 ** 12 + k, 0, f"row {k} é", bytes([k, 255]))
    assert row.f == pytest.approx(k / 4) and row.d == pytest.approx(k / 3, rel=1e-6)  # float_list is float32
    assert row.arr == pytest.approx([k + 0.5, -k, 2.0]) and row.iarr == [k, k * k] and row.v == [k, 1.5]


def test_tfrecords_refuse_bad_input_clearly(spark, tmp_path):
    from tfos.errors import TFOSConfigError
    from tfos.ml import load_tfrecords, save_tfrecords

    out = str(tmp_path / "records")
    save_tfrecords(spark.createDataFrame([(1,)], ["x"]), out)
    with pytest.raises(TFOSConfigError, match="exists and is not empty"):
        save_tfrecords(spark.createDataFrame([(2,)], ["x"]), out)
    assert save_tfrecords(spark.createDataFrame([(2,), (3,)], ["x"]), out, overwrite=True) == 2
    assert sorted(r.x for r in load_tfrecords(spark, out).collect()) == [2, 3]
    with pytest.raises(TFOSConfigError, match=r"columns m \(map<string,bigint>\) cannot be stored"):
        save_tfrecords(spark.createDataFrame([({"a": 1},)], ["m"]), str(tmp_path / "m"))
    with pytest.raises(Exception, match=r"partition 0 row 1: column 'x' is null"):
        save_tfrecords(spark.createDataFrame([(1.0,), (None,)], "x double").coalesce(1), str(tmp_path / "n"))
    with pytest.raises(TFOSConfigError, match="no TFRecord files found"):
        load_tfrecords(spark, str(tmp_path / "nothing-here"))


def test_compat_dfutil_functions(sc, spark, tmp_path):
    from tfos.compat import dfutil

    df = spark.createDataFrame([(k, f"s{k}", [float(k), 1.0]) for k in range(20)], ["k", "s", "pair"])
    out = str(tmp_path / "tfr")
    dfutil.saveAsTFRecords(df, out)
    loaded = dfutil.loadTFRecords(sc, out)
    assert dfutil.isLoadedDF(loaded) and not dfutil.isLoadedDF(df)
    assert sorted((r.k, r.s, r.pair) for r in loaded.collect()) == [(k, f"s{k}", [float(k), 1.0]) for k in range(20)]
    # TFoS's building blocks, used the way TFoS programs used them
    pairs = df.rdd.mapPartitions(dfutil.toTFExample(df.dtypes))
    assert pairs.count() == 20 and pairs.first()[1] is None
    rows = pairs.mapPartitions(lambda it: dfutil.fromTFExample(it)).collect()
    assert sorted(r.k for r in rows) == list(range(20))


def register_from_executor(addr):
    def register(_):
        import os
        import socket

        from tfos.compat import reservation

        client = reservation.Client(addr)
        client.register({"host": socket.gethostname(), "pid": os.getpid(), "key": b"\x00secret"})
        client.await_reservations(timeout=60)
        client.close()

    return register


def test_reservation_server_collects_nodes_registering_from_executors(sc):
    from tfos.compat import reservation

    server = reservation.Server(2)
    addr = server.start()
    try:
        sc.parallelize(range(2), 2).foreachPartition(register_from_executor(addr))
        metas = server.await_reservations(sc, timeout=60)
    finally:
        server.stop()
    assert len(metas) == 2
    assert len({m["pid"] for m in metas}) == 2  # two executors, two Python workers
    assert all(m["key"] == b"\x00secret" for m in metas)


def fit_linear(args, ctx):
    """Native train_fn: y = 2a - 3b + 1 from the fed (features, label) columns."""
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = tf.keras.Sequential([tf.keras.Input(shape=(2,), name="x"), tf.keras.layers.Dense(1, name="y")])
        model.compile(optimizer=tf.keras.optimizers.SGD(0.1), loss="mse")
    feed = ctx.get_data_feed(input_mapping=args.input_mapping)
    dataset = feed.as_dataset(args.batch_size * ctx.num_workers).map(lambda d: (d["x"], d["y_true"]))
    model.fit(dataset, epochs=args.epochs, verbose=0)
    import tempfile

    # Under MWMS every worker saves; only the chief's copy is kept.
    model.save(args.export_dir if ctx.job_name == "chief" else tempfile.mkdtemp(), save_format="tf")


def test_estimator_pipeline_fits_transforms_and_persists(sc, spark, tmp_path, no_leftovers):
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.feature import VectorAssembler

    from tfos.ml import TFEstimator, TFModel

    rng = np.random.default_rng(0)
    ab = rng.uniform(-1, 1, size=(600, 2))
    rows = [(float(a), float(b), float(2 * a - 3 * b + 1)) for a, b in ab]
    df = spark.createDataFrame(rows, ["a", "b", "label"]).repartition(2).cache()  # one row order for every read
    df.count()
    export_dir = str(tmp_path / "export")
    estimator = (TFEstimator(fit_linear, {"note": "kept"})
                 .setInputMapping({"features": "x", "label": "y_true"}).setClusterSize(2).setEpochs(30)
                 .setBatchSize(16).setExportDir(export_dir).setGraceSecs(0))
    assembler = VectorAssembler(inputCols=["a", "b"], outputCol="features")  # a vector column, fed as an array
    fitted = Pipeline(stages=[assembler, estimator]).fit(df)
    model = fitted.stages[1]
    assert isinstance(model, TFModel) and model.getExportDir() == export_dir and model.args.note == "kept"
    model.setInputMapping({"features": "x"}).setOutputMapping({"y": "prediction"})

    predicted = fitted.transform(df)
    # A Spark ML model: the input columns stay, the mapped outputs are appended.
    assert predicted.columns == ["a", "b", "label", "features", "prediction"]
    assert dict(predicted.dtypes)["prediction"] == "array<double>"
    got = np.array([r.prediction[0] for r in predicted.collect()])
    assert len(got) == 600

    import tensorflow as tf

    signature = tf.saved_model.load(export_dir).signatures["serving_default"]
    features = np.array([[r.a, r.b] for r in df.collect()], dtype=np.float32)
    local = signature(x=tf.constant(features))["y"].numpy()[:, 0]
    np.testing.assert_allclose(got, local, rtol=1e-5, atol=1e-5)  # the same model, run on the executors
    np.testing.assert_allclose(local, 2 * features[:, 0] - 3 * features[:, 1] + 1, atol=0.1)  # and it learned

    holes = spark.createDataFrame([([1.0, 2.0],), (None,)], "f array<double>").coalesce(1)
    with pytest.raises(Exception, match=r"partition 0 row 1: column 'f' is null"):
        TFModel({}).setInputMapping({"f": "x"}).setOutputMapping({"y": "p"}).setExportDir(export_dir) \
            .transform(holes).collect()

    fitted.write().overwrite().save(str(tmp_path / "pipeline"))
    again = PipelineModel.load(str(tmp_path / "pipeline"))
    reloaded = np.array([r.prediction[0] for r in again.transform(df).collect()])
    np.testing.assert_allclose(reloaded, got, rtol=1e-6)

    estimator.save(str(tmp_path / "estimator"))
    loaded = TFEstimator.load(str(tmp_path / "estimator"))
    assert loaded.uid == estimator.uid and loaded.train_fn is not None
    assert (loaded.getClusterSize(), loaded.getEpochs(), loaded.getInputMapping(), loaded.args.note) == \
        (2, 30, {"features": "x", "label": "y_true"}, "kept")


def test_state_saved_by_an_older_tfos_as_a_pickle_file_still_loads(sc, spark, tmp_path):
    import shutil

    from pyspark import cloudpickle

    from tfos.ml import TFEstimator

    estimator = TFEstimator(fit_linear, {"note": "old"}).setEpochs(3)
    path = str(tmp_path / "old")
    estimator.save(path)
    shutil.rmtree(os.path.join(path, "state.parquet"))  # as tfos saved it before: an RDD pickle file
    state = {"args": estimator.args, "train_fn": fit_linear, "export_fn": None, "arg_params": []}
    sc.parallelize([cloudpickle.dumps(state)], 1).saveAsPickleFile(os.path.join(path, "state"))
    loaded = TFEstimator.load(path)
    assert (loaded.uid, loaded.getEpochs(), loaded.args.note, loaded.train_fn.__name__) == \
        (estimator.uid, 3, "old", "fit_linear")


def count_tfrecords(args, ctx):
    """InputMode.TENSORFLOW train_fn: reads the TFRecords fit() left in args.tfrecord_dir."""
    import json

    import tensorflow as tf

    files = sorted(tf.io.gfile.glob(args.tfrecord_dir + "/part-*"))
    records = [tf.train.Example.FromString(r) for f in files for r in tf.data.TFRecordDataset(f).as_numpy_iterator()]
    with open(os.path.join(args.out, f"{ctx.job_name}-{ctx.task_index}.json"), "w") as f:
        json.dump({"records": len(records), "features": sorted(records[0].features.feature)}, f)


def mark_exported(args):
    open(os.path.join(args.out, "exported"), "w").close()


def test_tensorflow_mode_fit_writes_tfrecords_once_and_runs_export_fn(spark, tmp_path, no_leftovers):
    import json

    from tfos import InputMode
    from tfos.ml import TFEstimator, load_tfrecords

    records = str(tmp_path / "records")
    df = spark.createDataFrame([(float(k), k % 3, f"note {k}") for k in range(30)], ["a", "label", "note"])
    estimator = (TFEstimator(count_tfrecords, {"out": str(tmp_path)}, export_fn=mark_exported)
                 .setInputMapping({"a": "x", "label": "y"}).setInputMode(InputMode.TENSORFLOW)
                 .setTFRecordDir(records).setClusterSize(2).setGraceSecs(0))
    estimator.fit(df)
    seen = [json.loads((tmp_path / f"{role}.json").read_text()) for role in ("chief-0", "worker-0")]
    assert seen == [{"records": 30, "features": ["a", "label"]}] * 2  # the mapped columns only
    assert (tmp_path / "exported").exists()

    parts = sorted((tmp_path / "records").glob("part-*"))
    written = [p.stat().st_mtime_ns for p in parts]
    estimator.fit(load_tfrecords(spark, records))  # read from tfrecord_dir: used as it is, not rewritten
    assert [p.stat().st_mtime_ns for p in sorted((tmp_path / "records").glob("part-*"))] == written
    assert json.loads((tmp_path / "chief-0.json").read_text())["records"] == 30


def test_estimator_and_model_refuse_bad_settings_before_any_job(spark):
    from tfos.errors import TFOSConfigError
    from tfos.ml import TFEstimator, TFModel

    df = spark.createDataFrame([(1.0, 2.0)], ["a", "b"])
    with pytest.raises(TFOSConfigError, match="set the input mapping first"):
        TFEstimator(fit_linear, {}).fit(df)
    with pytest.raises(TFOSConfigError, match=r"names columns \['c'\] that the DataFrame lacks"):
        TFEstimator(fit_linear, {}).setInputMapping({"c": "x"}).fit(df)
    with pytest.raises(TFOSConfigError, match="set export_dir"):
        TFModel({}).setInputMapping({"a": "x"}).setOutputMapping({"y": "p"}).transform(df)
    with pytest.raises(TFOSConfigError, match="must be a function"):
        TFEstimator("not a function", {})


def test_compat_spark_example_trains_and_infers(sc, tmp_path, no_leftovers):
    example = load_script("compat_digits_spark")
    args = example.parse_args(["--epochs", "8", "--export_dir", str(tmp_path / "model")])
    assert example.run(sc, args) >= 0.85


def test_compat_pipeline_example_fits_and_transforms(sc, tmp_path, no_leftovers):
    example = load_script("compat_digits_pipeline")
    args = example.parse_args(["--epochs", "8", "--export_dir", str(tmp_path / "model"),
                               "--tfrecord_dir", str(tmp_path / "tfrecords")])
    assert example.run(sc, args) >= 0.85
