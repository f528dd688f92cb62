"""Streaming training: a file-source stream fed to the nodes as files arrive, each row once."""

from __future__ import annotations

import json
import os
import threading

import tfos
from tests.integration.conftest import wait_until

ROWS_PER_FILE = 50


def read_until(args, ctx):
    """Reads rows until it has ``args["want"]`` of them, records their ids, then ends the feed."""
    feed = ctx.get_data_feed()
    ids: list[int] = []
    while len(ids) < args["want"] and not feed.should_stop():
        ids += [int(row[0]) for row in feed.next_batch(10)]  # next_batch waits for 10 rows: files hold 50
    with open(os.path.join(args["out"], f"{args['tag']}-{ctx.job_name}.json"), "w") as f:
        json.dump(ids, f)
    feed.terminate()


def write_file(directory, index):
    rows = [{"id": index * ROWS_PER_FILE + i, "x": float(i)} for i in range(ROWS_PER_FILE)]
    tmp = os.path.join(directory, f".f{index}.tmp")
    with open(tmp, "w") as f:
        f.write("\n".join(json.dumps(r) for r in rows))
    os.rename(tmp, os.path.join(directory, f"f{index}.json"))  # the file source must see whole files


def seen(out, tag):
    ids = []
    for name in os.listdir(out):
        if name.startswith(tag + "-"):
            with open(os.path.join(out, name)) as f:
                ids += json.load(f)
    return ids


def test_stream_is_fed_as_files_arrive_and_a_restart_feeds_no_batch_twice(sc, tmp_path, no_leftovers):
    from pyspark.sql import SparkSession

    spark = SparkSession(sc)
    incoming, out, checkpoint = tmp_path / "in", tmp_path / "out", str(tmp_path / "checkpoint")
    incoming.mkdir()
    out.mkdir()
    write_file(incoming, 0)
    stream = (spark.readStream.schema("id long, x double").option("maxFilesPerTrigger", 1).json(str(incoming))
              .select("id", "x"))

    # First query: file 1 arrives while the cluster trains; the single worker stops after both files' rows.
    cluster = tfos.run(sc, read_until, {"want": 2 * ROWS_PER_FILE, "out": str(out), "tag": "a"}, 1,
                       input_mode=tfos.InputMode.SPARK, master_node=None, progress=False)
    writer = threading.Thread(target=lambda: (wait_until(lambda: sum(cluster.consumed_rows().values()) > 0, 120),
                                              write_file(incoming, 1)))
    writer.start()
    cluster.train(stream, checkpoint_location=checkpoint)
    writer.join()
    cluster.shutdown()
    assert sorted(seen(out, "a")) == list(range(2 * ROWS_PER_FILE))

    # The query restarts from its checkpoint on a new cluster: only the new file's rows come.
    write_file(incoming, 2)
    cluster = tfos.run(sc, read_until, {"want": ROWS_PER_FILE, "out": str(out), "tag": "b"}, 1,
                       input_mode=tfos.InputMode.SPARK, master_node=None, progress=False)
    cluster.train(stream, checkpoint_location=checkpoint)
    cluster.shutdown()
    assert sorted(seen(out, "b")) == list(range(2 * ROWS_PER_FILE, 3 * ROWS_PER_FILE))
    assert not spark.streams.active
