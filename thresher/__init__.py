"""thresher: select and weight training data for language models."""

__version__ = "0.1.0"

from thresher.config import JobError, JobSpec, load_job  # noqa: E402

__all__ = ["JobError", "JobSpec", "load_job", "run", "__version__"]


def run(job: JobSpec | dict, data: object = None, **kwargs: object):  # type: ignore[no-untyped-def]
    """Run a job (a JobSpec or a dict like a job file) on optional in-memory data."""
    from thresher.pipelines.runner import run_job

    spec = job if isinstance(job, JobSpec) else load_job(data=job)
    return run_job(spec, data=data, **kwargs)  # type: ignore[arg-type]
