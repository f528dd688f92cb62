"""Rows <-> columns (executors and node processes): pack a slice of a partition into columns.

A row is a tuple or list of fields (a pyspark Row is a tuple), or a single value such
as a numpy array or a number. Field ``j`` of every row becomes column ``j`` with shape
``(rows, *field_shape)``. A row that does not fit its batch raises FeedDataError
naming the partition and the row's offset in it.

Numbers, bools and numpy arrays become numpy arrays (fixed width, zero-copy on the
wire). ``bytes`` and ``bytearray`` values (binary: PySpark hands binary columns to RDD
code as bytearray) and ``str`` values (UTF-8 text), alone or in equal-length lists,
become a :class:`VarColumn`: Arrow's layout of offsets plus one data buffer, never
padded, so every byte (trailing NULs included) arrives as sent and a chunk costs the
bytes of its values plus 8 bytes per value. A numpy ``S`` / ``U`` array field stays a
fixed-width numpy column: numpy itself already pads it and drops trailing NULs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tfos.errors import FeedDataError, ProtocolError

#: Column spec ``dtype`` of a :class:`VarColumn`: raw bytes or UTF-8 text.
BINARY, STRING = "binary", "string"
VAR_KINDS = (BINARY, STRING)
_FIXED_KINDS = set("biufcSU?")
_KIND_NAMES = {BINARY: "bytes", STRING: "str"}


class VarColumn:
    """A column of variable-length values in Arrow's layout: int64 offsets plus a uint8 data buffer.

    Value ``i`` (row-major over ``shape``) is ``data[offsets[i]:offsets[i + 1]]``: bytes
    for ``kind == "binary"``, UTF-8 text for ``kind == "string"``. Slicing rows shares
    both buffers; ``offsets[0]`` need not be 0 and ``data`` may extend past the values.
    """

    __slots__ = ("kind", "offsets", "data", "shape")

    def __init__(self, kind: str, offsets: np.ndarray, data: np.ndarray,
                 shape: tuple[int, ...] | None = None) -> None:
        self.kind = kind
        self.offsets = offsets
        self.data = data
        self.shape = (len(offsets) - 1,) if shape is None else tuple(shape)

    @classmethod
    def from_values(cls, kind: str, values: Sequence[Any], shape: tuple[int, ...] | None = None) -> VarColumn:
        """From a flat sequence of bytes-like values (binary) or str (string); raises UnicodeEncodeError."""
        if kind == STRING:
            values = list(map(str.encode, values))
        offsets = np.empty(len(values) + 1, np.int64)
        offsets[0] = 0
        np.cumsum(np.fromiter(map(len, values), np.int64, len(values)), out=offsets[1:])
        # join copies each value once, bytearray and bytes alike; frombuffer adds no copy
        return cls(kind, offsets, np.frombuffer(b"".join(values), np.uint8), shape)

    @classmethod
    def concat(cls, parts: Sequence[VarColumn]) -> VarColumn:
        """The rows of ``parts`` one after another (one copy of their bytes)."""
        parts = [p.compact() for p in parts]
        offsets = np.empty(sum(len(p.offsets) - 1 for p in parts) + 1, np.int64)
        offsets[0] = 0
        at, base = 1, 0
        for p in parts:
            n = len(p.offsets) - 1
            np.add(p.offsets[1:], base, out=offsets[at:at + n])
            at, base = at + n, base + len(p.data)
        data = np.concatenate([p.data for p in parts]) if parts else np.empty(0, np.uint8)
        rows = sum(p.shape[0] for p in parts)
        return cls(parts[0].kind, offsets, data, (rows, *parts[0].shape[1:]))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes this column takes on the wire and in a node's buffer: offsets plus values."""
        return 8 * len(self.offsets) + int(self.offsets[-1] - self.offsets[0])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: slice) -> VarColumn:
        if not isinstance(index, slice):
            raise TypeError("a VarColumn is sliced by rows only; use values() or to_numpy() for its items")
        start, stop, step = index.indices(self.shape[0])
        if step != 1:
            raise TypeError("a VarColumn is sliced by contiguous rows only")
        stop = max(start, stop)
        width = self.row_width
        return VarColumn(self.kind, self.offsets[start * width:stop * width + 1], self.data,
                         (stop - start, *self.shape[1:]))

    @property
    def row_width(self) -> int:
        """Values per row (1 for a column of single values)."""
        return int(np.prod(self.shape[1:], dtype=np.int64))

    def reshape(self, shape: tuple[int, ...]) -> VarColumn:
        if int(np.prod(shape, dtype=np.int64)) != len(self.offsets) - 1:
            raise ValueError(f"cannot reshape {len(self.offsets) - 1} values into {shape}")
        return VarColumn(self.kind, self.offsets, self.data, shape)

    def compact(self) -> VarColumn:
        """The same values with offsets from 0 and a data buffer of exactly their bytes (no copy of the data)."""
        first, last = int(self.offsets[0]), int(self.offsets[-1])
        if first == 0 and len(self.data) == last:
            return self
        return VarColumn(self.kind, self.offsets - first if first else self.offsets, self.data[first:last],
                         self.shape)

    def row_bytes(self) -> np.ndarray:
        """Bytes each row takes (its values plus their offsets), as an int64 array."""
        width = self.row_width
        if width == 0:
            return np.zeros(self.shape[0], np.int64)
        ends = self.offsets[::width]
        return np.diff(ends) + 8 * width

    def values(self, decode: bool = True) -> list[Any]:
        """The values, row-major: bytes, or str for a string column when ``decode``."""
        first = int(self.offsets[0])
        blob = self.data[first:int(self.offsets[-1])].tobytes()
        bounds = (self.offsets - first).tolist()
        if decode and self.kind == STRING:
            return [blob[a:b].decode() for a, b in zip(bounds, bounds[1:])]
        return [blob[a:b] for a, b in zip(bounds, bounds[1:])]

    def to_numpy(self, decode: bool = True) -> np.ndarray:
        """An object ndarray of ``shape`` holding :meth:`values`."""
        array = np.empty(len(self.offsets) - 1, object)
        array[:] = self.values(decode)
        return array.reshape(self.shape)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        # np.asarray / tf.constant see the values (an object array), never the raw buffers
        array = self.to_numpy()
        return array if dtype is None else array.astype(dtype)

    def rows(self, decode: bool = True) -> list[Any]:
        """One entry per row: a value, or an object ndarray of the row's values."""
        return self.values(decode) if self.ndim == 1 else list(self.to_numpy(decode))

    def __repr__(self) -> str:
        return f"VarColumn({self.kind}, shape={self.shape}, {int(self.offsets[-1] - self.offsets[0])} bytes)"


Column = np.ndarray | VarColumn


_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_MASK = (1 << 64) - 1


def fingerprint(columns: Sequence[Column]) -> list[int]:
    """A cheap sum over each column's values (mod 2**64): the same for the same rows however they are
    chunked, so a retried feeding task can show that the rows it skips are those a node already holds."""
    sums = []
    for column in columns:
        if isinstance(column, VarColumn):
            lengths = np.diff(column.offsets)
            values = column.data[column.offsets[0]:column.offsets[-1]]
            total = int(lengths.sum(dtype=np.uint64)) * 1_000_003 + int(values.sum(dtype=np.uint64))
        else:
            array = np.ascontiguousarray(column)
            width = array.dtype.itemsize if array.dtype.itemsize in _UINT else 1
            total = int(array.reshape(-1).view(_UINT[width]).sum(dtype=np.uint64)) if array.size else 0
        sums.append(total & _MASK)
    return sums


def add_fingerprints(a: list[int] | None, b: list[int]) -> list[int]:
    return b if a is None else [(x + y) & _MASK for x, y in zip(a, b)]


def column_spec(column: Column) -> dict[str, Any]:
    """A column's ``{"dtype", "shape"}``; ``dtype`` is ``"binary"`` or ``"string"`` for a VarColumn."""
    if isinstance(column, VarColumn):
        return {"dtype": column.kind, "shape": list(column.shape)}
    return {"dtype": column.dtype.str, "shape": list(column.shape)}


def check_dtype(dtype: np.dtype) -> None:
    if dtype.kind not in _FIXED_KINDS or dtype.fields is not None or dtype.hasobject:
        raise ProtocolError(f"dtype {dtype} cannot be fed: use numbers, bools, bytes or strings")


def is_multi_field(row: Any) -> bool:
    return isinstance(row, (tuple, list))


def var_kind(value: Any) -> str | None:
    """BINARY or STRING when ``value`` is (a list of lists of ...) bytes / bytearray or str, else None."""
    while True:
        if isinstance(value, (bytes, bytearray)):
            return BINARY
        if isinstance(value, str):
            return STRING
        if isinstance(value, (list, tuple)) and value:
            value = value[0]
        elif isinstance(value, np.ndarray) and value.dtype.hasobject and value.size:
            value = value.flat[0]
        else:
            return None


def value_bytes(value: Any) -> int:
    """About the bytes ``value`` (bytes, str or nested lists of them) takes in a VarColumn."""
    if isinstance(value, (bytes, bytearray, str)):
        return len(value) + 8
    try:
        return sum(map(value_bytes, value))
    except TypeError:
        return 8


def pack(rows: Sequence[Any], partition: int, offset: int, multi: bool,
         expected: list[dict[str, Any]] | None = None) -> list[Column]:
    """Packs ``rows`` (rows ``offset..`` of ``partition``) into columns.

    ``expected`` (column specs from earlier chunks) pins dtype kind and row shape.
    """
    if multi:
        width = len(rows[0]) if is_multi_field(rows[0]) else -1
        # set(map(...)) checks every row in C; the Python loop runs only to name a bad row
        if not all(issubclass(t, (tuple, list)) for t in set(map(type, rows))) or set(map(len, rows)) != {width}:
            for i, row in enumerate(rows):
                if not is_multi_field(row):
                    raise FeedDataError(f"partition {partition} row {offset + i}: is a {type(row).__name__}, not a "
                                        "tuple or list of fields like the rows before it", partition=partition,
                                        row=offset + i)
                if len(row) != width:
                    raise FeedDataError(f"partition {partition} row {offset + i}: has {len(row)} fields, the batch "
                                        f"has {width}", partition=partition, row=offset + i)
        if expected is not None and width != len(expected):
            raise FeedDataError(f"partition {partition} row {offset}: has {width} fields, earlier rows have "
                                f"{len(expected)}", partition=partition, row=offset)
        fields: Sequence[Sequence[Any]] = list(zip(*rows))
    else:
        fields = [rows]
    columns = []
    for j, values in enumerate(fields):
        column = _column(values, partition, offset, j)
        if expected is not None:
            _check_against(column, expected[j], values, partition, offset, j)
        columns.append(column)
    return columns


def _column(values: Sequence[Any], partition: int, offset: int, field: int) -> Column:
    first = values[0]
    kind = var_kind(first)
    if kind is not None:
        return _var_column(values, kind, partition, offset, field)
    try:
        column = np.asarray(values)  # one copy, and ~3x faster than np.stack for a list of arrays
    except ValueError:
        raise _mismatch(values, partition, offset, field) from None
    try:
        check_dtype(column.dtype)
    except ProtocolError:
        raise _mismatch(values, partition, offset, field) from None
    if column.dtype.kind in "US" and not (isinstance(first, np.ndarray) and first.dtype.kind in "US"):
        raise _mismatch(values, partition, offset, field)
    return column


def _var_column(values: Sequence[Any], kind: str, partition: int, offset: int, field: int) -> VarColumn:
    leaf = (bytes, bytearray) if kind == BINARY else str
    try:
        if all(issubclass(t, leaf) for t in set(map(type, values))):
            return VarColumn.from_values(kind, values)
        inner = _var_shape(values[0])
        if not inner:
            raise _mismatch(values, partition, offset, field)
        flat: list[Any] = []
        for value in values:
            if not _flatten(value, inner, leaf, flat):
                raise _mismatch(values, partition, offset, field)
        return VarColumn.from_values(kind, flat, (len(values), *inner))
    except UnicodeEncodeError:
        for i, value in enumerate(values):
            try:
                _flatten(value, _var_shape(value), leaf, [], encode=True)
            except UnicodeEncodeError as exc:
                raise FeedDataError(f"partition {partition} row {offset + i}: field {field} is not valid text "
                                    f"({exc.reason}, e.g. a lone surrogate); feed it as bytes",
                                    partition=partition, row=offset + i) from None
        raise


def _var_shape(value: Any) -> tuple[int, ...]:
    shape = []
    while not isinstance(value, (bytes, bytearray, str)):
        if isinstance(value, np.ndarray):
            return (*shape, *value.shape)
        if not isinstance(value, (list, tuple)) or not value:
            return (*shape, len(value)) if isinstance(value, (list, tuple)) else tuple(shape)
        shape.append(len(value))
        value = value[0]
    return tuple(shape)


def _flatten(value: Any, shape: tuple[int, ...], leaf: Any, out: list[Any], encode: bool = False) -> bool:
    """Appends the values of ``value`` (nested lists of ``shape``) to ``out``; False if it has another shape."""
    if not shape:
        if not isinstance(value, leaf):
            return False
        if encode and isinstance(value, str):
            value.encode()
        out.append(value)
        return True
    if isinstance(value, np.ndarray):
        if value.shape != shape or not value.dtype.hasobject:
            return False
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or len(value) != shape[0]:
        return False
    return all(_flatten(v, shape[1:], leaf, out, encode) for v in value)


def _mismatch(values: Sequence[Any], partition: int, offset: int, field: int) -> FeedDataError:
    ref_shape, ref_kind = _describe(values[0])
    for i, value in enumerate(values):
        shape, kind = _describe(value)
        if (shape, kind) != (ref_shape, ref_kind):
            return FeedDataError(
                f"partition {partition} row {offset + i}: field {field} is {kind} of shape {shape}, "
                f"the batch has {ref_kind} of shape {ref_shape}", partition=partition, row=offset + i)
    return FeedDataError(f"partition {partition} rows {offset}-{offset + len(values) - 1}: field {field} "
                         f"({type(values[0]).__name__}) cannot be fed; use numbers, bytes, strings or "
                         "equal-shaped arrays", partition=partition, row=offset)


def _describe(value: Any) -> tuple[tuple[int, ...], str]:
    if value is None:
        return (), "None"
    kind = var_kind(value)
    if kind is not None:
        leaf = (bytes, bytearray) if kind == BINARY else str
        shape = _var_shape(value)
        if not _flatten(value, shape, leaf, []):
            return (-1,), "ragged or mixed"
        return shape, _KIND_NAMES[kind]
    try:
        array = np.asarray(value)
    except ValueError:
        return (-1,), "ragged"
    kind = {"b": "bool", "i": "number", "u": "number", "f": "number", "c": "number", "S": "bytes",
            "U": "str"}.get(array.dtype.kind, "object")
    return array.shape, kind


def _spec_name(dtype: str) -> str:
    return _KIND_NAMES.get(dtype) or str(np.dtype(dtype))


def _check_against(column: Column, spec: dict[str, Any], values: Sequence[Any], partition: int, offset: int,
                   field: int) -> None:
    want_dtype = spec["dtype"]
    if isinstance(column, VarColumn) or want_dtype in VAR_KINDS:
        same_kind = isinstance(column, VarColumn) and column.kind == want_dtype
        have = _KIND_NAMES[column.kind] if isinstance(column, VarColumn) else str(column.dtype)
    else:
        kind = np.dtype(want_dtype).kind
        same_kind = column.dtype.kind == kind or (column.dtype.kind in "biuf" and kind in "biuf")
        have = str(column.dtype)
    if same_kind and list(column.shape[1:]) == list(spec["shape"][1:]):
        return
    want = f"{_spec_name(want_dtype)} of row shape {tuple(spec['shape'][1:])}"
    for i, value in enumerate(values):
        shape, _ = _describe(value)
        if list(shape) != list(spec["shape"][1:]) or not same_kind:
            raise FeedDataError(f"partition {partition} row {offset + i}: field {field} has shape {shape} "
                                f"({have}), earlier rows have {want}", partition=partition, row=offset + i)
    raise FeedDataError(f"partition {partition} row {offset}: field {field} is {have}, earlier rows have "
                        f"{want}", partition=partition, row=offset)


def concat(parts: Sequence[Column]) -> Column:
    """Pieces of one column, rows one after another."""
    if isinstance(parts[0], VarColumn):
        return VarColumn.concat(parts)  # type: ignore[arg-type]
    return np.concatenate(parts)


def as_array(column: Column, decode: bool = True) -> np.ndarray:
    """``column`` as a numpy array: a VarColumn becomes an object ndarray of bytes / str."""
    return column.to_numpy(decode) if isinstance(column, VarColumn) else column


def rows_from_columns(columns: list[Column], multi: bool) -> list[Any]:
    """The inverse of :func:`pack`: one tuple (or value) per row; binary values come back as bytes."""
    columns = [c.rows() if isinstance(c, VarColumn) else c for c in columns]
    if not multi:
        return list(columns[0])
    return list(zip(*columns))


def result_column(results: Any) -> Column:
    """One column of inference results: bytes / str values (or an object array of them) become a VarColumn."""
    if isinstance(results, np.ndarray) and not results.dtype.hasobject:
        return results
    if isinstance(results, (list, tuple)) and results:
        kind = var_kind(results[0])
        if kind is not None:
            return _var_column(results, kind, -1, 0, 0)
    array = np.asarray(results)
    if array.dtype.hasobject and array.size:
        kind = var_kind(array.flat[0])
        leaf = (bytes, bytearray) if kind == BINARY else str
        flat = array.ravel().tolist()
        if kind is not None and all(issubclass(t, leaf) for t in set(map(type, flat))):
            return VarColumn.from_values(kind, flat, array.shape)
    return array
