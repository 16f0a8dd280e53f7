"""Run the grid's runs as Ray tasks, on one machine or a multi-node Ray cluster (``--launcher ray``):
the Phase I grid's runs, and the Phase II study's parents and fine-tuning runs.

Ray does the scheduling: each work unit of the grid (a run, or a population of runs that
differ only in seed and corruption, see ``units.plan_units``) is one task that declares its
resources (CPUs, a GPU fraction), so Ray packs units onto nodes, and re-executes a task
whose worker process or node dies (``max_retries``). This module adds only what Ray cannot
know:

- a retried task trains its unit again (``units.train_unit_safely``), which skips completed runs
  and resumes interrupted ones from their checkpoints (atomic writes, ``metrics.jsonl`` cut
  back to the checkpoint), so a retry neither duplicates nor half-writes a result;
- an exception raised by the run itself (bad config, diverged data ...) is a result, not a
  system failure: it is returned as ``{"ok": False, "error": ...}`` and never retried;
- every task must write into the *same* results directory as the driver. On a real
  cluster that is a shared filesystem mounted at the same path on every node; a task
  checks this (a marker file the driver writes) and fails with a clear message rather than
  writing results onto a node-local disk where nobody would find them;
- completions, failures and nodes leaving or joining are reported on the driver as they
  happen.

Ray is an optional dependency (``pip install 'hybrid-rl[ray]'``), imported only here and
only when the Ray launcher is asked for. See docs/cluster.md.
"""
from __future__ import annotations

import os
import platform
import secrets
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from ..core.errors import HybridRLError, MissingDependencyError
from ..runs.configs import SCRATCH, FinetuneConfig, TrainConfig
from ..core.run_format import checkpoint_step
from ..runs.units import train_unit_safely

RunConfig = TrainConfig | FinetuneConfig  # a Phase I run or a Phase II fine-tuning run

INSTALL_HINT = "pip install 'hybrid-rl[ray]'"
# Driver environment variables that tell a run where data lives; passed on to every task
# (a worker process inherits the environment of its node's `ray start`, not the driver's).
FORWARDED_ENV_PREFIXES = ("HYBRID_RL_", "D4RL_", "MINARI_")
MARKER_PREFIX = ".ray_driver_"
# How long a task waits for the driver's marker to appear (shared filesystems such as NFS
# may show a new file on another node a moment late).
MARKER_WAIT_S = 10.0
# How long a task waits for a run locked by another process (NFSv4 leases last ~90 s).
RUN_LOCK_WAIT_S = 180.0


def require_ray():
    """Import and return the ``ray`` module, or raise the one-line install hint."""
    try:
        import ray
    except ImportError:
        raise MissingDependencyError(f"--launcher ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    except Exception as exc:  # a broken install (e.g. mismatched protobuf) fails on import
        raise MissingDependencyError(f"Ray is installed but fails to import ({type(exc).__name__}: {exc}); reinstall it: {INSTALL_HINT}") from None
    return ray


def threads_for(cpus_per_run: float) -> int:
    """torch intra-op threads of a task: its CPU share, rounded, at least one."""
    return max(1, int(round(cpus_per_run)))


# ---------------------------------------------------------------------------------------
# The task (runs in a Ray worker process, possibly on another machine)
# ---------------------------------------------------------------------------------------
def _this_node() -> str:
    """'hostname (node id prefix)': the id matches the driver's node-left/joined lines."""
    try:
        import ray

        return f"{platform.node()} ({ray.get_runtime_context().get_node_id()[:8]})"
    except Exception:
        return platform.node()


def _wait_for_marker(marker: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if marker.exists():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


def run_on_worker(unit: Sequence[RunConfig], threads: int, driver_cwd: str, marker_name: str, driver_version: str,
                  has_gpu: bool) -> list[dict[str, Any]]:
    """One work unit (a run or a population) inside a Ray task: a result per run, and never
    an exception for the runs' own failures (Ray must not retry those).

    The results directory is an absolute path (the driver made it so); relative dataset
    paths resolve against the driver's working directory when this node has it.
    """
    import hybrid_rl

    node = _this_node()
    try:
        if os.path.isdir(driver_cwd):
            os.chdir(driver_cwd)  # relative dataset paths mean what they meant on the driver
        if hybrid_rl.__version__ != driver_version:
            raise HybridRLError(f"node {node} has hybrid-rl {hybrid_rl.__version__} but the driver has {driver_version}; install the same version on every node")
        for directory in sorted({config.results_dir for config in unit}):
            if not _wait_for_marker(Path(directory) / marker_name, MARKER_WAIT_S):
                raise HybridRLError(
                    f"node {node} does not see the driver's results directory {directory} (marker {marker_name} missing): "
                    "put --results on a filesystem shared by all nodes, mounted at the same path"
                )
    except Exception as exc:  # noqa: BLE001 - reported as the unit's failure, never retried
        return [{"run_id": config.run_id, "ok": False, "error": f"{type(exc).__name__}: {exc}", "node": node} for config in unit]
    if not has_gpu:
        # Ray did not give this task a GPU: don't let 'auto' take one that another task owns.
        unit = [replace(config, device="cpu") if config.device == "auto" else config for config in unit]
    resumed_from = {config.run_id: checkpoint_step(Path(config.results_dir) / config.run_id) for config in unit}
    # A retry after a node died may find a run's lock still held by the dead node on a
    # network filesystem until its lease expires: wait for it.
    results = train_unit_safely(unit, threads, lock_wait_s=RUN_LOCK_WAIT_S)
    for result in results:
        result.update(node=node, resumed_from_step=resumed_from.get(result["run_id"]))
    return results


# ---------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------
def _alive_nodes(ray) -> dict[str, dict]:
    try:
        return {node["NodeID"]: node for node in ray.nodes() if node.get("Alive")}
    except Exception:  # the GCS briefly unreachable: report nothing this round
        return {}


def _node_name(node: dict) -> str:
    return f"{node.get('NodeManagerHostname') or node.get('NodeManagerAddress', '?')} ({node['NodeID'][:8]})"


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else ""


def _system_failure(ray, run_id: str, exc: BaseException, max_retries: int) -> dict[str, Any]:
    """The result of a task Ray could not complete: its worker or node died on every attempt,
    it was cancelled, or the task could not even start (e.g. hybrid-rl missing on a node)."""
    message = f"{type(exc).__name__}: {_first_line(exc)}"
    if "No module named 'hybrid_rl'" in str(exc):
        message += " (install hybrid-rl, the same version, on every node of the cluster)"
    if isinstance(exc, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError)):
        message = f"worker died on each of {max_retries + 1} attempts: {message}" if max_retries >= 0 else f"worker died: {message}"
    return {"run_id": run_id, "ok": False, "error": message}


def _report(result: dict[str, Any], finished: int, total: int, log: Callable[[str], None]) -> None:
    where = f" on {result['node']}" if result.get("node") else ""
    if result["ok"]:
        summary = result["summary"]
        resumed = f", resumed from step {result['resumed_from_step']:,}" if result.get("resumed_from_step") else ""
        log(f"[{finished}/{total}] done {result['run_id']}{where}: {summary['status']}, "
            f"final normalized return {summary.get('final_normalized_return', float('nan')):.1f}{resumed}")
    else:
        log(f"[{finished}/{total}] FAILED {result['run_id']}{where}: {result['error']}")


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """Fail fast if nothing listens at HOST:PORT (Ray itself retries for minutes)."""
    if address in ("auto", "local") or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except (OSError, ValueError) as exc:
        raise HybridRLError(
            f"no Ray cluster answers at {address} ({exc}); start one with `ray start --head` or fix --ray-address "
            "(use the address `ray start --head` prints)"
        ) from None


def _forwarded_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key.startswith(FORWARDED_ENV_PREFIXES) and key != "HYBRID_RL_DEBUG"}


def _absolute(config: RunConfig) -> RunConfig:
    """Results and cache directories, and a fine-tuning run's parent, as absolute paths
    (non-identity fields: resume is unaffected)."""
    config = replace(
        config,
        results_dir=str(Path(config.results_dir).expanduser().resolve()),
        cache_dir=str(Path(config.cache_dir).expanduser().resolve()) if config.cache_dir else None,
        progress=False,
    )
    if isinstance(config, FinetuneConfig) and config.parent != SCRATCH:
        config = replace(config, parent=str(Path(config.parent).expanduser().resolve()))
    return config


def run_configs_on_ray(configs: Sequence[RunConfig], **options: Any) -> dict[str, dict[str, Any]]:
    """Every config as its own Ray task (no populations); see :func:`run_units_on_ray`."""
    return run_units_on_ray([[config] for config in configs], **options)


def run_units_on_ray(
    units: Sequence[Sequence[RunConfig]],
    *,
    address: str | None = None,
    cpus_per_run: float = 1,
    gpus_per_run: float = 0,
    max_retries: int = 3,
    log: Callable[[str], None] = print,
    heartbeat_s: float = 60.0,
) -> dict[str, dict[str, Any]]:
    """Run every work unit (a run, or a population of runs: see ``units.plan_units``) as a
    Ray task; returns ``{run_id: result}`` in completion order.

    A result has the shape of the local launcher's: ``{"run_id", "ok": True, "summary"}`` or
    ``{"run_id", "ok": False, "error"}`` (plus ``"node"``, the host that ran it, and
    ``"resumed_from_step"``, the checkpoint step the last attempt started from, or None).

    address: a Ray cluster to connect to (``"auto"``: the one in $RAY_ADDRESS or started on this
        machine with ``ray start``; ``"HOST:6379"``: the head's address); None starts a local Ray instance on this machine and shuts it down at the end. If
        this process is already connected to Ray, that connection is used and left open.
    cpus_per_run, gpus_per_run: the resources each task (a run or a whole population)
        declares (a GPU fraction such as 0.25 lets four tasks share a GPU); torch uses
        ``round(cpus_per_run)`` threads (at least 1).
    max_retries: re-executions of a task whose worker process or node dies (its runs resume
        from their checkpoints). Exceptions raised by a run itself are never retried.
    heartbeat_s: seconds between progress lines while no run finishes.
    """
    ray = require_ray()
    if cpus_per_run <= 0:
        raise HybridRLError(f"--cpus-per-run must be positive, got {cpus_per_run:g}")
    if gpus_per_run < 0:
        raise HybridRLError(f"--gpus-per-run must be >= 0, got {gpus_per_run:g}")
    if gpus_per_run > 1 and gpus_per_run != int(gpus_per_run):
        raise HybridRLError(f"--gpus-per-run above 1 must be a whole number of GPUs, got {gpus_per_run:g}")
    if max_retries < -1:
        raise HybridRLError(f"max_retries must be >= 0 (or -1: retry forever), got {max_retries}")
    if gpus_per_run == 0 and any(c.device.startswith("cuda") for unit in units for c in unit):
        raise HybridRLError("--device cuda with --launcher ray needs a GPU share per run: pass --gpus-per-run (e.g. 0.25 lets four runs share a GPU)")

    # One writer per run directory: a run id already in an earlier unit is dropped.
    seen: set[str] = set()
    unique_units: list[list[RunConfig]] = []
    for unit in units:
        kept = [_absolute(config) for config in unit if config.run_id not in seen]
        seen.update(config.run_id for config in unit)
        if kept:
            unique_units.append(kept)
    dropped = sum(len(unit) for unit in units) - len(seen)
    if dropped:
        log(f"ray: {dropped} duplicate run(s) dropped (same run id)")
    if not unique_units:
        return {}

    own_connection = not ray.is_initialized()
    if own_connection:
        if address:
            log(f"ray: connecting to the cluster at {address} ...")
            _check_reachable(address)
            try:
                ray.init(address=address)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise HybridRLError(f"cannot connect to the Ray cluster at {address}: {_first_line(exc)}") from None
        else:
            log("ray: starting a local Ray instance (pass --ray-address to use a cluster) ...")
            ray.init(address="local", include_dashboard=False)
    else:
        log("ray: using this process's existing Ray connection" + (f" (not {address})" if address else ""))
    results_dirs = sorted({Path(c.results_dir) for unit in unique_units for c in unit})
    marker_name = f"{MARKER_PREFIX}{secrets.token_hex(8)}"
    markers = []
    try:
        for directory in results_dirs:
            directory.mkdir(parents=True, exist_ok=True)
            marker = directory / marker_name
            marker.write_text(f"hybrid-rl Ray driver on {platform.node()}, pid {os.getpid()}\n")
            markers.append(marker)
        return _run(ray, unique_units, marker_name, cpus_per_run, gpus_per_run, max_retries, log, heartbeat_s)
    finally:
        for marker in markers:
            marker.unlink(missing_ok=True)
        if own_connection:
            # A local instance is stopped; a cluster is only disconnected from (it keeps running).
            ray.shutdown()


def _run(ray, units: list[list[RunConfig]], marker_name: str, cpus_per_run: float, gpus_per_run: float, max_retries: int,
         log: Callable[[str], None], heartbeat_s: float) -> dict[str, dict[str, Any]]:
    import hybrid_rl

    total_resources = ray.cluster_resources()
    nodes = _alive_nodes(ray)
    cpus, gpus = total_resources.get("CPU", 0.0), total_resources.get("GPU", 0.0)
    what = "run" if all(len(unit) == 1 for unit in units) else "task (a run or a population)"
    log(f"ray: cluster of {len(nodes)} node(s), {cpus:g} CPUs, {gpus:g} GPUs; each {what} takes {cpus_per_run:g} CPU(s)"
        + (f" and {gpus_per_run:g} GPU" if gpus_per_run else "") + f", so up to {_concurrency(cpus, gpus, cpus_per_run, gpus_per_run)} at once")
    if cpus < cpus_per_run or gpus < gpus_per_run:
        log(f"ray: WARNING no node can hold a {what} now ({cpus_per_run:g} CPUs, {gpus_per_run:g} GPUs each): they wait until such a node joins")

    options: dict[str, Any] = {"num_cpus": cpus_per_run, "num_gpus": gpus_per_run, "max_retries": max_retries, "retry_exceptions": False}
    env = _forwarded_env()
    if env:
        options["runtime_env"] = {"env_vars": env}
    task = ray.remote(**options)(run_on_worker)
    threads = threads_for(cpus_per_run)
    driver_cwd = os.getcwd()
    pending = {
        task.remote(unit, threads, driver_cwd, marker_name, hybrid_rl.__version__, gpus_per_run > 0): unit
        for unit in units
    }
    total = sum(len(unit) for unit in units)
    populations = [unit for unit in units if len(unit) > 1]
    log(f"ray: {total} run(s) submitted as {len(units)} task(s)"
        + (f", {sum(len(u) for u in populations)} of them in {len(populations)} population(s)" if populations else "")
        + f"; results in {', '.join(sorted({c.results_dir for unit in units for c in unit}))}")
    results: dict[str, dict[str, Any]] = {}
    last_news = time.monotonic()
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=min(5.0, heartbeat_s))
            if ready:  # collect everything that is already finished, not just the first
                ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
            for ref in ready:
                unit = pending.pop(ref)
                try:
                    unit_results = ray.get(ref)
                except Exception as exc:  # Ray gave up: the worker or node died on every attempt
                    unit_results = [_system_failure(ray, config.run_id, exc, max_retries) for config in unit]
                for result in unit_results:
                    results[result["run_id"]] = result
                    _report(result, len(results), total, log)
                last_news = time.monotonic()
            now_nodes = _alive_nodes(ray)
            if now_nodes:
                for node_id in nodes.keys() - now_nodes.keys():
                    log(f"ray: node {_node_name(nodes[node_id])} left the cluster; its runs are retried (up to {max_retries} times) "
                        "and resume from their last checkpoint")
                for node_id in now_nodes.keys() - nodes.keys():
                    resources = now_nodes[node_id].get("Resources", {})
                    log(f"ray: node {_node_name(now_nodes[node_id])} joined ({resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs)")
                nodes = now_nodes
            if pending and time.monotonic() - last_news >= heartbeat_s:
                free = ray.available_resources().get("CPU", 0.0)
                running = sum(len(unit) for unit in pending.values())
                log(f"ray: {len(results)}/{total} finished, {running} running or queued; {free:g} of {ray.cluster_resources().get('CPU', 0):g} CPUs free")
                last_news = time.monotonic()
    except BaseException as exc:
        # Interrupted (Ctrl-C) or the driver failed: stop the tasks still going. Their
        # checkpoints stay; running the same grid again resumes them.
        for ref in pending:
            try:
                ray.cancel(ref)
            except Exception:
                pass
        log(f"ray: stopped by {type(exc).__name__}; {sum(len(unit) for unit in pending.values())} unfinished run(s) cancelled "
            "(their checkpoints are kept: run the same command again to resume)")
        raise
    return results


def _concurrency(cpus: float, gpus: float, cpus_per_run: float, gpus_per_run: float) -> int:
    """Upper bound on simultaneous tasks from the cluster totals (ignores per-node packing)."""
    bound = int(cpus // cpus_per_run)
    if gpus_per_run > 0:
        bound = min(bound, int(gpus // gpus_per_run))
    return bound
