"""Errors raised by tfos (driver and executors).

Every error tfos raises on purpose derives from :class:`TFOSError`::

    TFOSError
     ├── TFOSConfigError (ValueError)          bad argument or setting, raised before any Spark job
     ├── ReservationTimeoutError (TimeoutError) nodes missing when the reservation timed out
     ├── NodeError                              main_fun raised on a node, or a node could not start
     ├── NodeFailedError                        a node process died or went silent
     ├── FeedTimeoutError (TimeoutError)        a node stopped consuming fed data
     ├── FeedDataError (ValueError)             a row that does not fit its batch
     ├── AuthError                              a peer without the cluster's key, or code not signed
     ├── ProtocolError                          malformed control-plane or feed message
     └── ReservationGoneError                   a reservation handle whose cluster no longer runs

Messages say what happened, the likely cause, and the setting to change. Errors cross
from executors to the driver by pickle through Spark, so each keeps its extra fields in
``__dict__`` (which ``BaseException.__reduce__`` carries) and takes only the message
as its positional argument.
"""

from __future__ import annotations

from typing import Any


class TFOSError(Exception):
    """Base class of every error tfos raises."""

    def __init__(self, message: str = "", **fields: Any) -> None:
        super().__init__(message)
        self.__dict__.update(fields)


class TFOSConfigError(TFOSError, ValueError):
    """An argument or setting is invalid; raised before any Spark job starts."""


class ReservationTimeoutError(TFOSError, TimeoutError):
    """Not every node registered with the driver within ``reservation_timeout``."""


class NodeError(TFOSError):
    """``main_fun`` raised on a node, or the node could not start.

    Attributes: ``job_name``, ``task_index``, ``host``, ``executor_id`` and
    ``remote_traceback`` (the node's formatted traceback, or the tail of its log).
    """


class NodeFailedError(TFOSError):
    """A node process died, its executor was lost, or it went silent."""


class FeedTimeoutError(TFOSError, TimeoutError):
    """A node did not take fed data within ``feed_timeout`` seconds."""


class FeedDataError(TFOSError, ValueError):
    """A fed row does not match its batch (shape or dtype); names partition and row."""


class AuthError(TFOSError):
    """A peer does not hold the cluster's key (TLS or feed proof), or a run is not signed with its key."""


class ProtocolError(TFOSError):
    """A control-plane or feed message is malformed."""


class ReservationGoneError(TFOSError):
    """The cluster a reservation handle names no longer answers (released, or its driver died)."""
