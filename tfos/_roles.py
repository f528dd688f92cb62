"""TensorFlow roles (driver and executors): which executor hosts which role, and TF_CONFIG.

Roles follow TensorFlowOnSpark's order: parameter servers first, then the chief,
the evaluator, and workers on the remaining executors. The driver makes the template;
executors turn the registered cluster into each node's TF_CONFIG.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

Role = tuple[str, int]
#: Jobs whose nodes run main_fun's training loop and so take fed data (InputMode.SPARK).
FEEDING_JOBS = ("chief", "master", "worker")


def cluster_template(num_executors: int, num_ps: int, master_node: str | None, eval_node: bool) -> dict[int, Role]:
    """Maps executor ids 0..num_executors-1 to (job_name, task_index)."""
    jobs = ["ps"] * num_ps
    if master_node:
        jobs.append(master_node)
    if eval_node:
        jobs.append("evaluator")
    jobs += ["worker"] * (num_executors - len(jobs))
    template: dict[int, Role] = {}
    seen: dict[str, int] = {}
    for executor_id, job in enumerate(jobs):
        template[executor_id] = (job, seen.get(job, 0))
        seen[job] = seen.get(job, 0) + 1
    return template


def cluster_spec(nodes: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Builds TensorFlow's cluster spec ({job: ["host:port", ...]}) from registrations."""
    spec: dict[str, list[tuple[int, str]]] = {}
    for node in nodes:
        spec.setdefault(node["job_name"], []).append((node["task_index"], f"{node['host']}:{node['port']}"))
    return {job: [addr for _, addr in sorted(tasks)] for job, tasks in sorted(spec.items())}


def tf_config(spec: Mapping[str, list[str]], job_name: str, task_index: int) -> dict[str, Any]:
    """TF_CONFIG for one node. The evaluator is not part of the training cluster."""
    cluster = {job: list(addrs) for job, addrs in spec.items() if job != "evaluator"}
    return {"cluster": cluster, "task": {"type": job_name, "index": task_index}, "environment": "cloud"}
