"""Spark installation helpers for the CLI (driver machine)."""

from __future__ import annotations

import os


def spark_home() -> str:
    """SPARK_HOME, or the pip-installed pyspark's own directory."""
    if os.environ.get("SPARK_HOME"):
        return os.environ["SPARK_HOME"]
    import pyspark

    return os.path.dirname(pyspark.__file__)


def spark_defaults() -> dict[str, str]:
    """Settings in the spark-defaults.conf Spark would read, if any."""
    conf_dir = os.environ.get("SPARK_CONF_DIR") or os.path.join(spark_home(), "conf")
    settings: dict[str, str] = {}
    try:
        with open(os.path.join(conf_dir, "spark-defaults.conf")) as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    key, _, value = line.partition(" ") if " " in line else line.partition("=")
                    settings[key.strip()] = value.strip()
    except OSError:
        pass
    return settings
