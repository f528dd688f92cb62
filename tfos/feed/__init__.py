"""The Spark feed (executors): partitions -> local channel -> DataFeed / tf.data, and back.

Spark tasks pack rows into columnar numpy chunks (``_columns``) and stream them over
a Unix or TCP socket (``_protocol``) to the node on their executor, whose ``FeedHub``
buffers them per queue, bounded in bytes. ``DataFeed`` hands them to ``main_fun`` as
rows, column arrays or a ``tf.data.Dataset``; inference results travel back the same way.
"""

from tfos.feed._datafeed import DataFeed

__all__ = ["DataFeed"]
