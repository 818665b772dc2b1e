"""thresher: select and weight training data for language models."""

from thresher.config import JobSpec, load_job
from thresher.specs import JobError
from thresher.version import __version__

__all__ = ["JobError", "JobSpec", "load_job", "run", "__version__"]


def run(job: JobSpec | dict, data: object = None, **kwargs: object):  # type: ignore[no-untyped-def]
    """Run a job (a JobSpec or a dict like a job file) on optional in-memory data."""
    from thresher.pipelines.runner import run_job

    spec = job if isinstance(job, JobSpec) else load_job(data=job)
    return run_job(spec, data=data, **kwargs)  # type: ignore[arg-type]
