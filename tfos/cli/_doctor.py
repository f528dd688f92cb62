"""``tfos doctor`` (driver machine): checks what tfos needs, prints a fix per problem."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib import metadata

from tfos.cli._spark import spark_defaults


def java_version() -> tuple[int | None, str]:
    """(major version or None, what was found) for the java Spark will use."""
    home = os.environ.get("JAVA_HOME")
    java = os.path.join(home, "bin", "java") if home else shutil.which("java")
    if not java or not os.path.exists(java):
        return None, "no java on PATH and JAVA_HOME unset"
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{java} failed: {exc}"
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        return None, f"could not read the version of {java}"
    major = int(match.group(1))
    return (int(match.group(2)) if major == 1 else major), f"{java}: {out.splitlines()[0]}"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def mlflow_check() -> tuple[str, str | None]:
    """(report line, problem or None) for MLflow tracking, an optional extra: missing is fine, broken is not."""
    version = _version("mlflow") or _version("mlflow-skinny")
    if version is None:
        return "mlflow: not installed (optional, for tfos.run(mlflow=True): pip install 'tfos[mlflow]')", None
    try:
        import mlflow  # noqa: F401 - importable, with the versions of its dependencies installed here
    except Exception as exc:  # noqa: BLE001 - any import failure is the finding
        return (f"mlflow: {version}, does not import", f"mlflow {version} is installed but fails to import "
                f"({type(exc).__name__}: {exc}); tfos.run(mlflow=True) cannot work. Fix: pip install 'tfos[mlflow]'")
    return f"mlflow: {version} (tfos.run(mlflow=True) can track runs)", None


def tls_check() -> tuple[str, str | None]:
    """(report line, problem or None): tfos's channels need a key made here and a mutual TLS 1.3 handshake."""
    import socket
    import threading

    try:
        from tfos._security import TLS_NAME, Credential

        credential = Credential.make()
        with socket.create_server(("127.0.0.1", 0)) as listener:
            def accept() -> None:
                conn, _ = listener.accept()
                with credential.ssl_context(server=True).wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)

            server = threading.Thread(target=accept, daemon=True)
            server.start()
            with socket.create_connection(listener.getsockname(), timeout=10) as raw, \
                    credential.ssl_context(server=False).wrap_socket(raw, server_hostname=TLS_NAME) as tls:
                tls.sendall(b"x")
                version = tls.version()
            server.join(10)
    except Exception as exc:  # noqa: BLE001 - any failure is the finding
        return "TLS: failed", (f"tfos cannot set up its mutual TLS ({type(exc).__name__}: {exc}). Fix: pip install "
                               "'cryptography>=42' and use a Python built with OpenSSL 1.1.1 or newer")
    return f"TLS: a cluster key and a mutual {version} handshake work", None


def settings_problems(conf: dict[str, str]) -> list[str]:
    """Problems with Spark settings that break tfos's reservation, each with its fix."""
    problems = []
    if conf.get("spark.dynamicAllocation.enabled", "false").lower() == "true":
        problems.append("spark.dynamicAllocation.enabled=true: executors come and go under tfos nodes. "
                        "Fix: --conf spark.dynamicAllocation.enabled=false")
    if conf.get("spark.speculation", "false").lower() == "true":
        problems.append("spark.speculation=true: a second copy of a feeding task would race the first. "
                        "Fix: --conf spark.speculation=false")
    cores, task_cpus = int(conf.get("spark.executor.cores", "1")), int(conf.get("spark.task.cpus", "1"))
    if cores // max(task_cpus, 1) > 1:
        problems.append(f"spark.executor.cores={cores} with spark.task.cpus={task_cpus} gives {cores // task_cpus} "
                        f"task slots per executor; tfos needs one. Fix: --conf spark.task.cpus={cores}")
    python = conf.get("spark.pyspark.python") or os.environ.get("PYSPARK_PYTHON")
    if python and not shutil.which(python):
        problems.append(f"PYSPARK_PYTHON / spark.pyspark.python={python!r} is not an executable. "
                        f"Fix: point it at {sys.executable}")
    return problems


def doctor(extra_conf: list[str]) -> int:
    problems: list[str] = []
    report: list[str] = []
    major, found = java_version()
    report.append(f"java: {found}")
    if major is None:
        problems.append("Java not found: Spark 4 needs Java 17 or 21. Fix: install openjdk-17-jre-headless "
                        "(apt-get install openjdk-17-jre-headless) or set JAVA_HOME")
    elif major not in (17, 21):
        problems.append(f"Java {major} found: Spark 4 runs on Java 17 or 21. Fix: set JAVA_HOME to a JDK 17 or 21")
    report.append(f"python: {sys.executable} ({sys.version.split()[0]})")
    wanted = {"pyspark": ("4.", "pip install 'pyspark>=4,<5'"),
              "tensorflow": ("2.21", "pip install tensorflow==2.21.*"),
              "tf-keras": ("2.21", "pip install tf-keras==2.21.*"), "keras": ("3.", "pip install 'keras>=3'")}
    for dist, (prefix, fix) in wanted.items():
        version = _version(dist)
        report.append(f"{dist}: {version or 'not installed'}")
        if version is None or not version.startswith(prefix):
            problems.append(f"{dist} {version or 'missing'}: tfos needs {prefix}x. Fix: {fix}")
    for check in (tls_check, mlflow_check):
        line, problem = check()
        report.append(line)
        problems += [problem] if problem else []
    python = os.environ.get("PYSPARK_PYTHON")
    report.append(f"PYSPARK_PYTHON: {python or f'unset (tfos uses {sys.executable})'}")
    conf = spark_defaults()
    for item in extra_conf:
        key, sep, value = item.partition("=")
        if not sep:
            problems.append(f"--conf {item!r} is not KEY=VALUE")
            continue
        conf[key.strip()] = value.strip()
    problems += settings_problems(conf)
    for line in report:
        print(f"  {line}")
    if not problems:
        print("tfos doctor: no problems found")
        return 0
    print(f"tfos doctor: {len(problems)} problem(s):")
    for problem in problems:
        print(f"  - {problem}")
    return 1
