"""The one way curation stages run: a datatrove executor per stage, chosen by ``executor.kind`` [3.1].

- ``local`` (default): datatrove's ``LocalPipelineExecutor``, ``workers`` tasks at a time, stage after stage; after
  ``filter`` and ``dedup`` the run stops with one line if no document survived (:mod:`data.survival`);
- ``slurm``: datatrove's ``SlurmPipelineExecutor``, one job array per stage, each depending on the previous one
  (``executor.options``: ``partition``, ``time``, ``cpus_per_task``, ``mem_per_cpu_gb``, ``venv_path``, ...);
- ``ray``: datatrove's ``RayPipelineExecutor`` chained the same way (``executor.options``: ``cpus_per_task``, ...).

Every kind skips the tasks whose completion marker (``logs/<stage>/completions/NNNNN``) exists, which is how a
killed or failed run resumes.
"""

from __future__ import annotations

from pathlib import Path

from data.config import CurateConfig


def make_executor(config: CurateConfig, stage, depends=None):
    """The datatrove executor of one stage (``data.pipeline.Stage``), depending on ``depends``."""
    common = {
        "pipeline": stage.pipeline,
        "tasks": stage.tasks,
        "logging_dir": str(Path(config.output_dir) / "logs" / stage.name),
        "depends": depends,
    }
    kind, options = config.executor.kind, dict(config.executor.options)
    if kind == "local":
        from datatrove.executor import LocalPipelineExecutor

        # fork, not datatrove's forkserver: a forkserver worker re-imports the pipeline's modules (torch, transformers,
        # fastText) at every stage, which costs more than most stages' work; the driver holds no model to share.
        options.setdefault("start_method", "fork")
        return LocalPipelineExecutor(workers=min(stage.tasks, config.workers), **common, **options)
    if kind == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        return SlurmPipelineExecutor(job_name=f"curate-{stage.name}", **common, **options)
    from datatrove.executor import RayPipelineExecutor

    return RayPipelineExecutor(**common, **options)


def run_stages(config: CurateConfig, stages: list) -> bool:
    """Run the stages; True when they ran to the end here (local), False when submitted to a cluster."""
    if config.executor.kind != "local":
        previous = None
        for stage in stages:
            previous = make_executor(config, stage, previous)
        previous.run()  # launches the whole chain of dependencies
        return False
    from data.report import stage_steps, stage_written
    from data.survival import check_survivors

    root = Path(config.output_dir)
    for stale in root.rglob(".*.tmp"):  # a killed run's half-written files (every output is written then renamed)
        stale.unlink()
    for stage in stages:
        make_executor(config, stage).run()
        if stage.name in ("filter", "dedup"):
            check_survivors(
                stage.name,
                stage_written(root, stage.name),
                [stage_steps(root, stage.name)],
                str(root / "logs" / stage.name),
            )
    return True
