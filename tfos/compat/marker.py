"""TensorFlowOnSpark's ``marker`` module (both): special objects in TFoS's row queues.

TFoS's feeding tasks put an :class:`EndPartition` into a node's queue after each
partition so that ``DataFeed.next_batch`` returned that partition's last, partial batch
and its inference results could go back to the right Spark task. tfos's feed carries
partition boundaries in its own chunk headers, so Spark-fed rows never contain markers;
the classes are here for programs that test ``isinstance(item, marker.Marker)`` or
subclass them.
"""

from __future__ import annotations

__all__ = ["EndPartition", "Marker"]


class Marker:
    """Base class of the special (non-row) objects of a feed queue."""

    def __eq__(self, other: object) -> bool:
        # Markers carry no data: any two of one class are interchangeable, even after pickling.
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class EndPartition(Marker):
    """Marks the end of an RDD partition in a feed queue."""
