"""Multi-process start-up: one documented call around `jax.distributed.initialize`, so one script runs anywhere.

    import jaxformers as jf
    jf.distributed.initialize()          # first thing, before any other JAX call
    mesh = jf.make_mesh({"fsdp": -1})    # all devices of all processes
    model = jf.AutoModelForCausalLM.from_pretrained(path, mesh=mesh, rules=jf.FSDP)

- One process (a laptop, a Colab, one GPU box): nothing to do, `initialize()` returns at once.
- TPU pods, SLURM, Open MPI, Kubernetes: JAX reads the cluster from the environment; call `initialize()` with no
  arguments on every host.
- Anything else: pass `coordinator_address="host0:1234", num_processes=N, process_id=i`, or set the environment
  variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID, on every process.

On CPU, cross-process collectives need `jax_cpu_collectives_implementation="gloo"` (the default here; set on request
with `cpu_collectives=`). Afterwards, `jax.devices()` lists every process's devices and `jax.local_devices()` this
process's. Data: give `jf.shard_batch` each process's own rows. Checkpoints: every process calls
`jf.save_checkpoint` / `jf.load` with the same directory on a shared filesystem; each writes and reads its shards.
"""

from __future__ import annotations

import os

import jax


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    cpu_collectives: str | None = "gloo",
    **kwargs,
) -> bool:
    """Join (or start) a multi-process JAX run; a no-op for a single process. Safe to call twice.

    Args:
      coordinator_address: `host:port` of process 0 (default: JAX_COORDINATOR_ADDRESS or cluster auto-detection).
      num_processes / process_id: default: JAX_NUM_PROCESSES / JAX_PROCESS_ID or cluster auto-detection.
      cpu_collectives: CPU collectives implementation for cross-process CPU arrays ("gloo", "mpi"; None leaves it).
      **kwargs: passed to `jax.distributed.initialize` (local_device_ids, initialization_timeout, ...).

    Returns:
      True when this process is part of a multi-process run.
    """
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    num_processes = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    explicit = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or num_processes is not None
    if num_processes == 1 or (not explicit and not _cluster_detected()):
        return False
    if cpu_collectives is not None:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id, **kwargs)
    except ValueError as e:
        if not explicit and "coordinator_address" in str(e):
            return False  # no cluster environment detected: a single-process run
        raise
    return jax.process_count() > 1


def is_primary() -> bool:
    """True on process 0: the one that logs, prints and writes small side files."""
    return jax.process_index() == 0


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def _cluster_detected() -> bool:
    """Whether JAX's cluster auto-detection (TPU pod, SLURM, Open MPI, Kubernetes) recognises this environment."""
    try:  # JAX has no public detection call; initialisation itself stays on the public API
        from jax._src.clusters import ClusterEnv

        return any(env.is_env_present() for env in ClusterEnv._cluster_types if not env.opt_in_only_method)
    except (ImportError, AttributeError):
        return True  # cannot tell: let jax.distributed.initialize decide
