"""Jobs: time limits, size limits, which private addresses a job's URLs may reach, retries, progress."""

from __future__ import annotations

from dataclasses import dataclass

from comfy_worker.settings.reader import EnvReader, SettingsError, Variable
from comfy_worker.url_guard import UrlGuard

JOBS = (
    Variable("JOB_TIMEOUT_S", "1800",
             "Default job timeout; a job's `timeout_s` overrides it. It bounds the whole job from the moment the "
             "worker receives it: queue, downloads, upload, run, collecting and delivering the outputs.", "jobs"),
    Variable("MAX_WORKFLOW_NODES", "1000", "Most nodes a job's workflow may have.", "jobs"),
    Variable("MAX_REQUEST_MB", "100",
             "Largest job input (the whole `input` object as JSON, base64 files included).", "jobs"),
    Variable("MAX_OUTPUT_MB", "2000", "Largest total size of one job's output files.", "jobs"),
    Variable("WEBSOCKET_QUIET_S", "2",
             "Seconds without a websocket message after which /history is polled.", "jobs"),
    Variable("MAX_INPUT_FILE_MB", "50", "Largest input file (`images` entry) accepted, decoded.", "jobs"),
    Variable("INPUT_URL_TIMEOUT_S", "30",
             "Time limit for fetching one input given as an http(s) URL, the whole download (and never past the "
             "job's timeout).", "jobs"),
    Variable("ALLOW_PRIVATE_URLS", "",
             "Private addresses a job's URLs (input files, models, its own `s3.endpoint_url`) may reach. Empty: "
             "none; loopback, private, link-local (169.254.169.254), unique-local, multicast and unspecified "
             "addresses are refused. 1 or true: all of them. Otherwise hosts and CIDR ranges separated by commas, "
             "e.g. minio.internal,10.0.0.0/8. The worker's own BUCKET_ENDPOINT_URL is always trusted.", "jobs"),
    Variable("PROGRESS_INTERVAL_S", "1", "Least time between two progress updates sent to RunPod.", "jobs"),
    Variable("RETRY_LOST_JOBS", "1",
             "Run a job once more, on another instance, when its instance died before the job produced any "
             "output. A job pinned with `gpu` runs again only on another instance of that GPU.", "jobs"),
    Variable("RETRY_OUT_OF_MEMORY", "1",
             "After CUDA out of memory, free the instance's memory (/free) and run the job once more.",
             "jobs"),
    Variable("HUNG_INSTANCE_S", "30",
             "Seconds a poll of an instance may go unanswered; after a job timed out or lost contact, the "
             "seconds its instance has to answer again before it is killed and restarted.",
             "jobs"),
    Variable("REFRESH_WORKER", "0",
             "End the worker after every job (RunPod starts a fresh one); a job can ask with `refresh_worker`.",
             "jobs"),
    Variable("METRICS_LOG_EVERY", "10", "Per-instance metrics are logged after every this many jobs.", "jobs"),
)


@dataclass(frozen=True)
class JobSettings:
    job_timeout_s: float
    max_workflow_nodes: int
    max_request_bytes: int
    max_output_bytes: int
    websocket_quiet_s: float
    max_input_file_bytes: int
    input_url_timeout_s: float
    url_guard: UrlGuard
    progress_interval_s: float
    metrics_log_every: int
    retry_lost_jobs: bool
    retry_out_of_memory: bool
    hung_instance_s: float
    refresh_worker: bool

    @classmethod
    def read(cls, env: EnvReader) -> JobSettings:
        return cls(
            job_timeout_s=env.number("JOB_TIMEOUT_S", 1800, minimum=1),
            max_workflow_nodes=env.integer("MAX_WORKFLOW_NODES", 1000, minimum=1),
            max_request_bytes=int(env.number("MAX_REQUEST_MB", 100, minimum=0.001) * 1_000_000),
            max_output_bytes=int(env.number("MAX_OUTPUT_MB", 2000, minimum=0.001) * 1_000_000),
            websocket_quiet_s=env.number("WEBSOCKET_QUIET_S", 2, minimum=0.1),
            max_input_file_bytes=int(env.number("MAX_INPUT_FILE_MB", 50, minimum=0.001) * 1_000_000),
            input_url_timeout_s=env.number("INPUT_URL_TIMEOUT_S", 30, minimum=1),
            url_guard=_url_guard(env.raw("ALLOW_PRIVATE_URLS")),
            progress_interval_s=env.number("PROGRESS_INTERVAL_S", 1),
            metrics_log_every=env.integer("METRICS_LOG_EVERY", 10, minimum=1),
            retry_lost_jobs=env.flag("RETRY_LOST_JOBS", True),
            retry_out_of_memory=env.flag("RETRY_OUT_OF_MEMORY", True),
            hung_instance_s=env.number("HUNG_INSTANCE_S", 30, minimum=1),
            refresh_worker=env.flag("REFRESH_WORKER", False),
        )


def _url_guard(text: str) -> UrlGuard:
    try:
        return UrlGuard.parse(text)
    except ValueError as error:
        raise SettingsError(f"ALLOW_PRIVATE_URLS: {error}; use 1, or hosts and CIDR ranges separated by "
                            "commas") from None
