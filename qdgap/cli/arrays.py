"""``--backend`` and the one Slurm option group, turned into what core takes. Submitting, following and
merging arrays is core's (``workflow.members`` for members, ``workflow.part_array`` for predict/FNA parts)."""

from __future__ import annotations

from qdgap.cli import ui


def split_backend(backend: str | None) -> tuple[str, str | None]:
    """``--backend`` -> (local or slurm, the model runtime or None for the default)."""
    from qdgap.core.deploy.export import BACKENDS

    if backend in ("local", "slurm"):
        return backend, None
    if backend is not None and backend not in BACKENDS:
        raise ui.usage_error(f"--backend must be one of {', '.join(BACKENDS)} or local, slurm; got {backend!r}")
    return "local", backend


def slurm_resources(
    array, job_name, partition, account, time_min, cpus, gpus, mem_gb, image, max_parallel, *, usual_time_min=60
):
    """The Slurm resources of a ``--backend slurm`` run from the Slurm option group (checked before any work);
    None for local. ``--time``, ``--cpus`` and ``--mem`` left out (None) are sized from the partition when the
    array is submitted; ``usual_time_min`` is what a task of the command usually needs, minutes."""
    if array != "slurm":
        return None
    from qdgap.core.workflow import slurm

    return slurm.SlurmResources(
        partition=partition,
        account=account,
        time_min=time_min,
        cpus_per_task=cpus,
        gpus_per_task=gpus,
        mem_gb=mem_gb,
        image=image,
        max_parallel=max_parallel,
        job_name=job_name,
        usual_time_min=usual_time_min,
    )
