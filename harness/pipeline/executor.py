"""A suite fanned out as jobs through submitit: one job per method, on Slurm (`--executor slurm`) or on this
machine (`--executor local`), each job multi-GPU through submitit's distributed environment when it asks
for several GPUs.

The submitting command owns the run directory RUN. Each job runs the suite restricted to its method into
RUN/jobs/<method>/, a run directory of its own (lock, stages, training resume), and the submitter merges
each finished job's method entry and rows into RUN/results.json as jobs finish (the per-query ranks and
checkpoints stay in the job's folder; the merged rows point there). A failed job is named with its log;
`--resume RUN` merges whatever finished meanwhile (also after the submitter itself was stopped) and submits
only the methods still missing, each continuing its own training state. The scheduler is submitit's; the
harness writes none.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError
from harness.storage.files import atomic_write
from harness.interrupt import Interrupted, Stopped, signal_number
from harness.pipeline.results import read_results, table, write_results
from harness.pipeline.rundir import RunLock
from harness.suite import Suite


@dataclass
class ExecutorSpec:
    kind: str  # "slurm" or "local"
    partition: str | None = None
    gpus_per_node: int = 0
    nodes: int = 1
    time_min: int = 24 * 60

    @property
    def device_type(self) -> str:
        """Where the jobs compute: their fingerprints say so, not the submitting machine's."""
        return "cuda" if self.gpus_per_node > 0 else "cpu"


def job_main(suite: Suite, job_dir: str, quiet: bool) -> str:
    """What one job runs: the distributed environment exported when the job has several tasks (torchrun's
    variables, read by harness.distributed), then the one-method suite into its folder."""
    import submitit

    from harness.pipeline.run import run_suite

    if submitit.JobEnvironment().num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export()
    run_suite(suite, Path(job_dir), quiet=quiet, invocation={"command": "job", "methods": [suite.methods[0].name]})
    return job_dir


def job_suite(suite: Suite, method: str) -> Suite:
    return dataclasses.replace(suite, methods=[m for m in suite.methods if m.name == method])


def merge_job(results: dict, job_dir: Path, method: str, run_dir: Path) -> bool:
    """Copy a finished job's method entry and rows into the run's results; False when it has not finished."""
    file = job_dir / "results.json"
    if not file.is_file():
        return False
    done = read_results(file)
    if method not in done["methods"]:
        return False
    prefix = job_dir.relative_to(run_dir)
    entry = dict(done["methods"][method])
    if "training" in entry and "checkpoint" in entry:  # the job's own checkpoint, relative to the job folder
        entry["checkpoint"] = str(prefix / entry["checkpoint"])
    results["methods"][method] = entry
    rows = [{**row, "ranks_file": str(prefix / row["ranks_file"])} for row in done["rows"] if row["method"] == method]
    results["rows"] = [r for r in results["rows"] if r["method"] != method] + rows
    record = results.setdefault("executor", {}).setdefault("jobs", {}).setdefault(method, {})
    record.update(folder=str(prefix), environment=done.get("environment", {}),
                  world_size=done.get("distributed", {}).get("world_size", 1), state="merged")
    return True


def executor_for(spec: ExecutorSpec, logs: Path):
    import submitit

    executor = submitit.AutoExecutor(folder=logs, cluster=spec.kind)
    tasks = max(1, spec.gpus_per_node)
    parameters = {"name": "harness", "timeout_min": spec.time_min, "nodes": spec.nodes, "tasks_per_node": tasks,
                  "gpus_per_node": spec.gpus_per_node}
    if spec.kind == "slurm":
        parameters["slurm_partition"] = spec.partition
    executor.update_parameters(**parameters)
    return executor


def submit_suite(suite: Suite, run_dir: Path, spec: ExecutorSpec, quiet: bool = False, force: bool = False,
                 log=print, poll_seconds: float = 2.0, invocation: dict | None = None) -> dict:
    """Submit one job per method still to run, merge each as it finishes, and return the run's results."""
    from harness.pipeline.run import prepare_results

    if spec.kind == "slurm" and not spec.partition:
        raise HarnessError("--executor slurm needs --slurm-partition P.")
    with RunLock(run_dir):
        results, kept = prepare_results(suite, run_dir, quiet, force, log, spec.device_type)
        results["invocation"] = invocation or {}
        results["executor"] = {**dataclasses.asdict(spec), "jobs": results.get("executor", {}).get("jobs", {})}
        pending = []
        for method in [m.name for m in suite.methods if m.name not in kept]:
            if merge_job(results, run_dir / "jobs" / method, method, run_dir):
                log(f"{method}: merged from its finished job ({run_dir / 'jobs' / method})")
            else:
                pending.append(method)
        write_results(run_dir, results)
        jobs = {}
        if pending:
            executor = executor_for(spec, run_dir / "jobs" / "logs")
            with executor.batch():  # one submission (a Slurm job array), as a cluster prefers
                for method in pending:
                    jobs[method] = executor.submit(job_main, job_suite(suite, method), str(run_dir / "jobs" / method),
                                                   True)
        for method, job in jobs.items():
            results["executor"]["jobs"][method] = {"job_id": job.job_id, "state": "submitted",
                                                   "log": str(job.paths.stdout)}
            log(f"{method}: job {job.job_id} ({spec.kind}), log {job.paths.stdout}")
        write_results(run_dir, results)
        failed = []
        try:
            waiting = dict(jobs)
            while waiting:
                for method, job in list(waiting.items()):
                    if not job.done():
                        continue
                    del waiting[method]
                    try:
                        job.result()
                    except Exception as error:  # the job's own failure, reported with its log
                        failed.append(f"{method} (job {job.job_id}): {str(error).strip().splitlines()[-1]}; log "
                                      f"{job.paths.stderr}")
                        results["executor"]["jobs"][method]["state"] = "failed"
                        continue
                    merge_job(results, run_dir / "jobs" / method, method, run_dir)
                    write_results(run_dir, results)
                    log(f"{method}: job {job.job_id} finished, rows merged")
                if waiting:
                    time.sleep(poll_seconds)
        except (KeyboardInterrupt, Stopped) as stop:
            write_results(run_dir, results)
            raise Interrupted(f"interrupted: the submitted jobs keep running ({', '.join(waiting)}); their rows are "
                              f"merged into {run_dir} by the continue command once they finish", signal_number(stop),
                              run_dir) from None
        write_results(run_dir, results)
        atomic_write(run_dir / "jobs" / "jobs.json", json.dumps(results["executor"], indent=2) + "\n", "job record")
    if failed:
        raise HarnessError(f"{len(failed)} job(s) failed: " + "; ".join(failed) + f". The others are merged into "
                           f"{run_dir}; `--resume {run_dir}` submits the failed methods again.")
    log(table(results["rows"]))
    log(f"results: {run_dir / 'results.json'}")
    return results
