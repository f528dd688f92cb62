"""Binary and string columns without Spark: pack, the wire, the node's DataFeed and results, byte-exact."""

from __future__ import annotations

import json
import socket
import threading

import numpy as np
import pytest

from tfos.errors import FeedDataError, ProtocolError, TFOSError
from tfos.feed._columns import VarColumn, pack, result_column, rows_from_columns
from tfos.feed._datafeed import DataFeed
from tfos.feed._feeder import Feeder, _arrow_chunks, check_dataframe_schema, result_rows
from tfos.feed._hub import Chunk, FeedConnection, FeedQueue
from tfos.feed._protocol import MAX_FRAME_BYTES, column_spec, recv_frame, send_frame

rng = np.random.default_rng(7)


def random_bytes(n: int) -> bytes:
    return rng.integers(0, 256, n, dtype=np.uint8).tobytes()


def awkward_binary(n: int) -> list[bytes]:
    """Values numpy's fixed-width strings get wrong: trailing NULs, empties, and sizes from 0 to ~1 MiB."""
    values = [random_bytes(int(rng.integers(0, 64))) + b"\x00" for _ in range(n)]
    values[0] = b""
    values[1] = b"\x00\x00"
    values[2] = random_bytes(1 << 20) + b"\x00"  # a PNG-sized value beside tiny ones
    values[3] = b"\x89PNG\r\n\x1a\n" + random_bytes(5000)
    return values


TEXT = ["", "plain", "naïve café", "日本語テキスト", "emoji 🎉 and NUL\x00", "trailing\x00\x00", "x" * 3000]


def through_socket(write, read):
    """Runs ``write(sock)`` in a thread and ``read(peer)`` here, over a fresh socket pair."""
    a, b = socket.socketpair()
    a.settimeout(30)
    b.settimeout(30)

    def send():
        try:
            write(a)
        finally:
            a.shutdown(socket.SHUT_WR)

    writer = threading.Thread(target=send)
    writer.start()
    try:
        return read(b)
    finally:
        writer.join(30)
        a.close()
        b.close()


def read_all(sock):
    raw = bytearray()
    while chunk := sock.recv(1 << 20):
        raw += chunk
    return bytes(raw)


def wire(columns, header=None):
    """``columns`` sent as one frame and read back, plus the number of bytes the frame took."""
    raw = through_socket(lambda s: send_frame(s, header or {"op": "data"}, columns), read_all)
    _, received = through_socket(lambda s: s.sendall(raw), recv_frame)
    return received, len(raw)


def data_feed(frames, multi, names=None, inference=False):
    """A DataFeed over a queue holding the received ``frames`` (lists of columns)."""
    queue = FeedQueue("input", 1 << 40)
    queue.set_schema({"multi": multi, "names": names, "cols": [column_spec(c) for c in frames[0]]})
    conn = FeedConnection(None, inference=inference)
    for columns in frames:
        queue.put(Chunk(0, columns, len(columns[0]), sum(c.nbytes for c in columns), conn))
    queue.close()
    return DataFeed(None, queue)


# ---- pack + wire + rows --------------------------------------------------------------------------
def test_binary_rows_round_trip_byte_exact_through_pack_wire_and_next_batch():
    values = awkward_binary(300)
    rows = [(i, v) for i, v in enumerate(values)]
    columns = pack(rows, 0, 0, True)
    assert isinstance(columns[1], VarColumn) and columns[1].kind == "binary"
    received, _ = wire(columns)
    feed = data_feed([received], multi=True)
    back = feed.next_batch(1000)
    assert back == rows
    assert all(type(v) is bytes for _, v in back)


def test_bytearray_is_binary_and_comes_back_as_bytes_whatever_the_lengths():
    # PySpark hands BinaryType to RDD code as bytearray: values of different lengths are binary, not uint8 rows
    values = [bytearray(b"a\x00"), bytearray(b""), bytearray(random_bytes(777)), b"mixed with bytes\x00"]
    columns = pack([(v, i) for i, v in enumerate(values)], 0, 0, True)
    assert columns[0].kind == "binary"
    received, _ = wire(columns)
    assert rows_from_columns(received, True) == [(bytes(v), i) for i, v in enumerate(values)]


def test_equal_length_bytearrays_are_binary_too_not_uint8_arrays():
    columns = pack([bytearray(b"ab"), bytearray(b"cd")], 0, 0, False)
    assert isinstance(columns[0], VarColumn)
    assert rows_from_columns(columns, False) == [b"ab", b"cd"]


def test_str_stays_str_with_non_ascii_and_nuls():
    rows = [(t, t.encode()) for t in TEXT]
    received, _ = wire(pack(rows, 0, 0, True))
    assert [c.kind for c in received] == ["string", "binary"]
    back = rows_from_columns(received, True)
    assert back == rows
    assert all(type(t) is str and type(b) is bytes for t, b in back)


def test_mixed_rows_keep_numeric_columns_numeric_and_zero_copy():
    rows = [(np.full(4, i, np.float32), i, f"id-{i}", random_bytes(i) + b"\x00", True) for i in range(50)]
    columns = pack(rows, 0, 0, True)
    assert [type(c).__name__ for c in columns] == ["ndarray", "ndarray", "VarColumn", "VarColumn", "ndarray"]
    received, _ = wire(columns)
    arrays = data_feed([received], multi=True).next_batch_arrays(100)
    assert arrays[0].dtype == np.float32 and arrays[0].shape == (50, 4)
    assert arrays[2].dtype == object and list(arrays[2]) == [r[2] for r in rows]
    assert list(arrays[3]) == [r[3] for r in rows]
    assert arrays[4].dtype == bool


def test_single_value_rows_of_bytes():
    values = awkward_binary(40)
    received, _ = wire(pack(values, 0, 0, False))
    feed = data_feed([received], multi=False)
    assert feed.next_batch(15) == values[:15]
    arrays = feed.next_batch_arrays(100)
    assert arrays[0].dtype == object and list(arrays[0]) == values[15:]


def test_equal_length_lists_of_strings_and_bytes():
    rows = [(["a", "bé", ""], [b"\x00", b"xy\x00"]), (["c", "d", "eee"], [b"", b"z"])]
    columns = pack(rows, 0, 0, True)
    assert columns[0].shape == (2, 3) and columns[1].shape == (2, 2)
    received, _ = wire(columns)
    arrays = data_feed([received], multi=True).next_batch_arrays(10)
    assert arrays[0].shape == (2, 3) and arrays[0].tolist() == [r[0] for r in rows]
    assert arrays[1].tolist() == [r[1] for r in rows]


def test_numpy_fixed_width_string_arrays_stay_numpy():
    rows = [(np.array([b"ab", b"c"]),), (np.array([b"d", b"e"]),)]
    columns = pack(rows, 0, 0, True)
    assert isinstance(columns[0], np.ndarray) and columns[0].dtype.kind == "S"


def test_batches_across_chunks_join_values_exactly():
    values = awkward_binary(90)
    frames = []
    for start in range(0, 90, 30):
        received, _ = wire(pack([(i, values[i]) for i in range(start, start + 30)], 0, start, True))
        frames.append(received)
    feed = data_feed(frames, multi=True)
    got = []
    while batch := feed.next_batch(17):  # every batch but the first spans two chunks somewhere
        got.extend(batch)
    assert got == list(enumerate(values))


# ---- memory ---------------------------------------------------------------------------------------
def test_frame_bytes_are_the_values_plus_offsets_never_padding():
    values = [b"x" * 100_000] + [b"y"] * 999
    columns = pack(values, 0, 0, False)
    received, sent = wire(columns)
    payload = sum(map(len, values)) + 8 * (len(values) + 1)
    header = sent - payload
    assert 0 < header < 200, header
    # numpy's fixed width would have padded every value to 100 kB: ~100 MB
    assert columns[0].nbytes == payload
    assert received[0].nbytes == payload and received[0].data.nbytes == sum(map(len, values))


def test_a_sliced_column_sends_only_its_own_bytes():
    values = [random_bytes(1000) for _ in range(100)]
    column = pack(values, 0, 0, False)[0]
    part = column[40:45]
    assert part.nbytes == 5 * 1000 + 6 * 8
    received, sent = wire([part])
    assert received[0].values() == values[40:45]
    assert received[0].offsets[0] == 0 and len(received[0].data) == 5000
    assert sent < 5000 + 6 * 8 + 200


def test_rdd_chunks_are_cut_by_the_bytes_of_their_values(monkeypatch):
    monkeypatch.setenv("TFOS_FEED_CHUNK_BYTES", str(1 << 20))
    sizes = [10] + [300_000] * 10 + [10] * 5000  # a tiny first row must not set the chunk length
    rows = [(i, random_bytes(n)) for i, n in enumerate(sizes)]
    feeder = Feeder("c", "s", "a", "q", 0, (), 10.0, True)
    chunks = list(feeder._chunks(0, iter(rows)))
    assert [len(columns[0]) for columns, _ in chunks] == [4, 3, 3, 5001]
    assert max(sum(c.nbytes for c in columns) for columns, _ in chunks) <= 1 << 20
    back = [row for columns, schema in chunks for row in rows_from_columns(columns, True)]
    assert back == rows
    assert chunks[0][1]["cols"] == [{"dtype": "<i8", "shape": [4]}, {"dtype": "binary", "shape": [4]}]


def test_a_value_bigger_than_a_chunk_travels_alone(monkeypatch):
    monkeypatch.setenv("TFOS_FEED_CHUNK_BYTES", "1000")
    rows = [b"a", random_bytes(5000), b"b"]
    feeder = Feeder("c", "s", "a", "q", 0, (), 10.0, True)
    lengths = [len(columns[0]) for columns, _ in feeder._chunks(0, iter(rows))]
    assert lengths == [1, 1, 1]


def test_queue_accounts_the_bytes_actually_held():
    values = awkward_binary(50)
    received, _ = wire(pack(values, 0, 0, False))
    feed = data_feed([received], multi=False)
    assert feed._queue.bytes == sum(map(len, values)) + 8 * 51


# ---- DataFrame (Arrow) path -----------------------------------------------------------------------
@pytest.mark.parametrize("large", [False, True])
def test_arrow_binary_and_string_columns_round_trip_exactly(large, monkeypatch):
    import pyarrow as pa

    monkeypatch.setenv("TFOS_FEED_CHUNK_BYTES", str(256 << 10))
    n = 120
    blobs = awkward_binary(n)
    texts = [TEXT[i % len(TEXT)] for i in range(n)]
    batch = pa.RecordBatch.from_pydict(
        {"id": pa.array(range(n), pa.int64()),
         "image": pa.array(blobs, pa.large_binary() if large else pa.binary()),
         "name": pa.array(texts, pa.large_string() if large else pa.string()),
         "tags": pa.array([[t, "x"] for t in texts], pa.list_(pa.string()))})
    sliced = batch.slice(7, 100)  # a non-zero Arrow offset into shared buffers
    feeder = Feeder("c", "s", "a", "q", 0, (), 10.0, True)
    chunks = list(feeder._chunks(0, iter([batch, sliced])))  # a DataFrame partition's batches, told from rows
    assert chunks[0][1]["cols"][1:] == [{"dtype": "binary", "shape": [n]}, {"dtype": "string", "shape": [n]},
                                        {"dtype": "string", "shape": [n, 2]}]
    assert max(sum(c.nbytes for c in columns) for columns, _ in chunks[1:]) <= (256 << 10) + (1 << 20) + 200
    frames = [wire(columns)[0] for columns, _ in chunks]
    feed = data_feed(frames, multi=True, names=["id", "image", "name", "tags"])
    rows = []
    while batch_rows := feed.next_batch(33):
        rows.extend(batch_rows)
    expected = [(i, blobs[i], texts[i], [texts[i], "x"]) for i in list(range(n)) + list(range(7, 107))]
    assert [(r[0], r[1], r[2], list(r[3])) for r in rows] == expected
    assert all(type(r[1]) is bytes and type(r[2]) is str for r in rows)


def test_arrow_chunks_are_cut_by_bytes(monkeypatch):
    import pyarrow as pa

    monkeypatch.setenv("TFOS_FEED_CHUNK_BYTES", str(100_000))
    values = [b"s"] * 10 + [random_bytes(40_000)] * 10 + [b"t"] * 10
    chunks = list(_arrow_chunks(3, iter([pa.RecordBatch.from_pydict({"b": pa.array(values)})])))
    assert [len(columns[0]) for columns, _ in chunks] == [12, 2, 2, 2, 12]
    assert [v for columns, _ in chunks for v in columns[0].values()] == values


def test_arrow_null_binary_is_named():
    import pyarrow as pa

    batch = pa.RecordBatch.from_pydict({"img": pa.array([b"a", None, b"c"], pa.binary())})
    with pytest.raises(FeedDataError, match=r"partition 4 row 1: column 'img' is null"):
        list(_arrow_chunks(4, iter([batch])))


def test_arrow_arrays_whose_length_changes_between_batches_are_named():
    import pyarrow as pa

    blobs = [pa.RecordBatch.from_pydict({"x": pa.array([[1.0, 2.0]] * 4)}),
             pa.RecordBatch.from_pydict({"x": pa.array([[1.0, 2.0, 3.0]] * 2)})]
    with pytest.raises(FeedDataError, match=r"partition 1 row 4: column 'x' holds arrays of shape \(3,\), "
                                            r"earlier rows have \(2,\)"):
        list(_arrow_chunks(1, iter(blobs)))


def test_arrow_unsupported_type_is_named():
    import pyarrow as pa

    batch = pa.RecordBatch.from_pydict({"when": pa.array([1, 2], pa.timestamp("us"))})
    with pytest.raises(FeedDataError, match=r"column 'when' has Arrow type timestamp"):
        list(_arrow_chunks(0, iter([batch])))


# ---- inference results ----------------------------------------------------------------------------
def results_through_the_wire(results):
    """``results`` handed to batch_results on a node; the rows the feeding task yields."""
    n = len(results[0]) if isinstance(results, tuple) else len(results)

    def node(sock):
        conn = FeedConnection(sock, inference=True)
        queue = FeedQueue("input", 1 << 30)
        columns = pack(list(range(n)), 0, 0, False)
        queue.put(Chunk(None, columns, n, sum(c.nbytes for c in columns), conn))
        feed = DataFeed(None, queue, train_mode=False)
        assert len(feed.next_batch(n)) == n
        try:
            feed.batch_results(results)
        except TFOSError as exc:
            errors.append(exc)

    errors: list[TFOSError] = []
    frame = through_socket(node, recv_frame)
    if errors:
        raise errors[0]
    header, got = frame
    assert header["op"] == "results" and header["rows"] == n
    return list(result_rows(got))


def test_bytes_results_come_back_byte_exact():
    values = awkward_binary(30)
    assert results_through_the_wire(values) == values
    assert results_through_the_wire([bytearray(v) for v in values]) == values


def test_str_results_stay_str():
    assert results_through_the_wire(TEXT) == TEXT


def test_object_array_results_as_from_a_tf_string_tensor():
    values = np.empty(4, object)
    values[:] = [b"\x00", b"", b"abc\x00", b"\xff" * 10]
    assert results_through_the_wire(values) == list(values)


def test_several_result_columns_mixing_numbers_and_bytes():
    scores = np.arange(3, dtype=np.float32)
    labels = np.empty(3, object)
    labels[:] = [b"cat\x00", b"", b"dog"]
    assert results_through_the_wire((scores, labels)) == [(0.0, b"cat\x00"), (1.0, b""), (2.0, b"dog")]


def test_results_of_mixed_kinds_are_refused():
    with pytest.raises(TFOSError, match=r"batch_results, result 1: .*None"):
        results_through_the_wire([b"a", None])


def test_result_column_keeps_numbers_numeric():
    column = result_column([1.5, 2.5])
    assert isinstance(column, np.ndarray) and column.dtype == np.float64


# ---- errors -------------------------------------------------------------------------------------------
def test_a_none_among_bytes_names_its_row():
    with pytest.raises(FeedDataError, match=r"partition 2 row 12: field 1 is None"):
        pack([(0, b"a"), (1, b"b"), (2, None)], 2, 10, True)


def test_str_after_bytes_in_a_later_chunk_names_its_row():
    first = pack([(0, b"a")], 0, 0, True)
    with pytest.raises(FeedDataError, match=r"partition 0 row 5: field 1 .*\(str\), earlier rows have bytes"):
        pack([(5, "text")], 0, 5, True, [column_spec(c) for c in first])


def test_bytes_after_numbers_names_its_row():
    first = pack([(0, 1.0)], 0, 0, True)
    with pytest.raises(FeedDataError, match=r"partition 0 row 1: field 1 .*earlier rows have float64"):
        pack([(1, b"x")], 0, 1, True, [column_spec(c) for c in first])


def test_lists_of_strings_of_different_lengths_are_refused():
    with pytest.raises(FeedDataError, match=r"row 1: field 0"):
        pack([(["a", "b"],), (["c"],)], 0, 0, True)


def test_text_that_cannot_be_utf8_names_its_row():
    with pytest.raises(FeedDataError, match=r"partition 0 row 1: field 0 is not valid text"):
        pack(["ok", "bad \udcff"], 0, 0, False)


# ---- protocol -----------------------------------------------------------------------------------------
def raw_frame(header: dict, payload: bytes = b"") -> socket.socket:
    a, b = socket.socketpair()
    raw = json.dumps(header).encode()
    a.sendall(len(raw).to_bytes(8, "big") + raw + payload)
    a.close()
    return b


def test_bad_offsets_are_a_protocol_error():
    offsets = np.array([0, 5, 3], "<i8").tobytes()
    sock = raw_frame({"op": "data", "cols": [{"dtype": "binary", "shape": [2], "nbytes": 3}]}, offsets + b"abc")
    with sock, pytest.raises(ProtocolError, match="bad offsets"):
        recv_frame(sock)


def test_oversized_var_column_is_refused_before_allocating():
    sock = raw_frame({"op": "data", "cols": [{"dtype": "string", "shape": [1], "nbytes": MAX_FRAME_BYTES}]})
    with sock, pytest.raises(ProtocolError, match="exceeds"):
        recv_frame(sock)


@pytest.mark.parametrize("spec", [{"dtype": "binary", "shape": [2]}, {"dtype": "binary", "shape": [], "nbytes": 0},
                                  {"dtype": "string", "shape": [1], "nbytes": -1}])
def test_malformed_var_specs_are_refused(spec):
    sock = raw_frame({"op": "data", "cols": [spec]})
    with sock, pytest.raises(ProtocolError, match="bad column spec"):
        recv_frame(sock)


# ---- DataFrame schema check on the driver -------------------------------------------------------------
class FakeFrame:
    def __init__(self, schema):
        self.schema = schema


def test_feedable_dataframe_columns_pass():
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import types as T

    schema = T.StructType([
        T.StructField("id", T.LongType()), T.StructField("x", T.ArrayType(T.FloatType())),
        T.StructField("img", T.BinaryType()), T.StructField("name", T.StringType()),
        T.StructField("v", VectorUDT()), T.StructField("grid", T.ArrayType(T.ArrayType(T.DoubleType()))),
        T.StructField("ok", T.BooleanType()), T.StructField("tags", T.ArrayType(T.StringType()))])
    check_dataframe_schema(FakeFrame(schema))


@pytest.mark.parametrize("data_type, shown, fix", [
    ("timestamp", "timestamp", "unix_timestamp"),
    ("date", "date", "unix_date"),
    ("decimal", r"decimal\(10,2\)", "cast it to double"),
    ("map", "map<string,int>", "map_keys"),
    ("struct", "struct<a:int>", "select its fields"),
    ("array_date", r"array<date> \(date inside it\)", "unix_date"),
])
def test_unsupported_dataframe_columns_are_named_with_their_type(data_type, shown, fix):
    from pyspark.sql import types as T

    types = {"timestamp": T.TimestampType(), "date": T.DateType(), "decimal": T.DecimalType(10, 2),
             "map": T.MapType(T.StringType(), T.IntegerType()),
             "struct": T.StructType([T.StructField("a", T.IntegerType())]), "array_date": T.ArrayType(T.DateType())}
    schema = T.StructType([T.StructField("id", T.LongType()), T.StructField("col_" + data_type, types[data_type])])
    with pytest.raises(FeedDataError, match=rf"column 'col_{data_type}' has type {shown}.*{fix}") as info:
        check_dataframe_schema(FakeFrame(schema))
    assert info.value.column == "col_" + data_type


def test_slices_and_concat_see_only_their_own_values():
    # slices share buffers: converting one must not expose its neighbours' bytes
    values = [b"\x01" * 3, b"\x02" * 5, b"\x03" * 7]
    column = VarColumn.from_values("binary", values)
    assert column[1:2].values() == [values[1]]
    assert VarColumn.concat([column[2:3], column[0:1]]).values() == [values[2], values[0]]
