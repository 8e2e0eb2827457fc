"""The worker's configuration: the only module that reads environment variables.

Every variable is declared once in VARIABLES (name, default, meaning); docs/configuration.md lists the same
table and a test keeps the two in agreement.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from .url_guard import UrlGuard

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Variable:
    name: str
    default: str
    meaning: str
    group: str


VARIABLES: tuple[Variable, ...] = (
    # --- ComfyUI instances ---
    Variable("COMFYUI_DIR", "<repo>/.comfyui/ComfyUI", "The ComfyUI installation every instance runs.", "fleet"),
    Variable("COMFY_PYTHON", "<this interpreter>", "The Python that runs ComfyUI.", "fleet"),
    Variable("COMFY_WORK_DIR", "<repo>/.work",
             "Root of each instance's own user, database, input, output and temp folders.", "fleet"),
    Variable("COMFY_NUM_GPUS", "all visible",
             "How many GPUs get an instance; 0 runs CPU instances even where GPUs exist.", "fleet"),
    Variable("COMFY_MULTI_GPU_SCHED", "1", "0 runs a single instance on GPU 0 (the rollback switch).", "fleet"),
    Variable("COMFY_CPU_INSTANCES", "1", "How many CPU instances run on a machine without a GPU.", "fleet"),
    Variable("COMFY_HOST", "127.0.0.1", "Address the instances listen on (loopback only).", "fleet"),
    Variable("COMFY_BASE_PORT", "8188", "Instance i listens on this port + i.", "fleet"),
    Variable("COMFY_EXTRA_ARGS", "", "Extra ComfyUI command-line flags for every instance.", "fleet"),
    Variable("COMFY_EXTRA_MODEL_PATHS", "",
             "extra_model_paths.yaml files (separated by ':') for every instance, e.g. a network volume.", "fleet"),
    Variable("COMFY_CUSTOM_NODES_DIRS", "",
             "Extra custom-node folders (separated by ':') loaded by every instance.", "fleet"),
    Variable("COMFY_START_TIMEOUT_S", "300", "Seconds an instance may take to answer after it starts.", "fleet"),
    Variable("COMFY_CACHE", "classic",
             "ComfyUI's node-output cache: classic (the last workflow's outputs only), ram (ComfyUI's own default: "
             "every workflow's outputs until RAM runs short, on a 512 GiB host 12.7 MiB per SDXL job), none, or "
             "lru:N.",
             "fleet"),
    Variable("COMFY_RESTART_DEAD", "1", "Restart an instance whose process exits while the worker runs.", "fleet"),
    # --- GPU performance (defaults are the measured best: docs/benchmarks/README.md) ---
    Variable("COMFY_VRAM_MODE", "auto",
             "auto, high, gpu-only, normal, dynamic or low. auto: chosen per job from its own model files: "
             "--highvram where they fit the card, ComfyUI's dynamic loading where not (the instance restarts to "
             "switch, 13-24 s, reported in the job's warnings).", "performance"),
    Variable("COMFY_CPU_PINNING", "1",
             "Pin each GPU instance to its own CPU cores (NUMA node of its GPU, else an even split).", "performance"),
    Variable("COMFY_WORKER_CPUS", "1", "CPU cores left to the worker process when instances are pinned.",
             "performance"),
    Variable("COMFY_THREADS_PER_INSTANCE", "4",
             "OMP/MKL threads of a pinned instance (at most its core count).", "performance"),
    Variable("COMFY_CUDA_MALLOC", "native",
             "native (PyTorch's caching allocator, honours PYTORCH_CUDA_ALLOC_CONF) or async (cudaMallocAsync, "
             "ComfyUI's default).", "performance"),
    Variable("GPU_TF32", "0",
             "TF32 for matmul and cuDNN in every instance (no gain measured on the fp16 SDXL benchmark).",
             "performance"),
    Variable("GPU_CUDNN_BENCHMARK", "0", "torch.backends.cudnn.benchmark in every instance.", "performance"),
    Variable("TORCH_COMPILE", "auto",
             "Compile every diffusion model on load: auto (inductor when WARMUP_WORKFLOW is set, so the compile "
             "happens before the first job), inductor, or off.", "performance"),
    Variable("TORCH_COMPILE_MODE", "reduce-overhead",
             "torch.compile mode: reduce-overhead (CUDA graphs; needs COMFY_CUDA_MALLOC=native), or default.",
             "performance"),
    Variable("COMPILE_CACHE_DIR", "/runpod-volume/.cache/torch-compile if a volume is mounted, else <work dir>",
             "Inductor and Triton caches shared by every instance (a new process on the same machine compiles in "
             "38 s instead of 150 s).",
             "performance"),
    Variable("MODEL_PREFETCH_THREADS", "8",
             "Readers that load a job's model files into the page cache as soon as the job arrives (and the "
             "warm-up workflow's at start), so ComfyUI finds them cached; 0 turns read-ahead off.", "performance"),
    Variable("WARMUP_WORKFLOW", "",
             "A workflow (a file path or inline JSON, API format) run on every instance at start.", "performance"),
    # --- jobs ---
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
             "output.", "jobs"),
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
    # --- models by URL ---
    Variable("MODEL_CACHE_DIR",
             "/runpod-volume/.cache/comfy-worker-models if a volume is mounted, else <work dir>/model-cache",
             "The cache of model files fetched by URL, shared by every instance (and every worker on the volume).",
             "models"),
    Variable("MODEL_CACHE_MAX_GB", "100",
             "The cache's size; least recently used files not in use are evicted past it.", "models"),
    Variable("MODEL_MAX_FILE_GB", "50", "Largest model file fetched.", "models"),
    Variable("MODEL_DOWNLOAD_TIMEOUT_S", "3600",
             "Time limit for downloading one model file (and never past the job's timeout).", "models"),
    Variable("HF_TOKEN", "", "Hugging Face token for hf:// model URLs (gated or private repositories).", "models"),
    # --- outputs ---
    Variable("OUTPUT_MODE", "auto",
             "base64, s3, or auto (base64 unless the response would pass OUTPUT_INLINE_LIMIT_MB).", "outputs"),
    Variable("OUTPUT_INLINE_LIMIT_MB", "10", "Largest response returned inline (RunPod's /run limit).", "outputs"),
    Variable("LOCAL_OUTPUT_DIR", "", "Also write each job's outputs under this folder (local runs).", "outputs"),
    Variable("BUCKET_ENDPOINT_URL", "", "S3 endpoint; with the keys below, outputs can go to S3.", "outputs"),
    Variable("BUCKET_ACCESS_KEY_ID", "", "S3 access key id.", "outputs"),
    Variable("BUCKET_SECRET_ACCESS_KEY", "", "S3 secret access key.", "outputs"),
    Variable("BUCKET_NAME", "",
             "S3 bucket; empty takes the first label of the endpoint's host (worker-comfyui's style).", "outputs"),
    Variable("BUCKET_PREFIX", "", "Key prefix: objects are stored as {prefix}/{job_id}/{filename}.", "outputs"),
    Variable("BUCKET_REGION", "", "S3 region (empty: the SDK's default).", "outputs"),
    Variable("BUCKET_URL_EXPIRY_S", "604800", "Lifetime of the presigned URLs returned (7 days).", "outputs"),
    # --- the process ---
    Variable("RUNPOD_LOG_LEVEL", "INFO",
             "The RunPod SDK's log level. Its own default, DEBUG, logs every job's whole result, base64 images and "
             "all.", "process"),
    Variable("LOG_LEVEL", "INFO", "The worker's log level.", "process"),
    Variable("VOLUME_NODE_REQUIREMENTS", "1",
             "Read by start.sh: install the requirements.txt of custom nodes on the network volume "
             "(/runpod-volume/custom_nodes) into the image's one environment before the worker starts.", "process"),
    Variable("RUNPOD_WEBHOOK_POST_OUTPUT", "",
             "Set by RunPod; when absent (local runs) no progress updates are sent.", "process"),
)


class SettingsError(ValueError):
    """An environment variable holds a value the worker cannot use."""


@dataclass(frozen=True)
class S3Config:
    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    bucket: str
    prefix: str = ""
    region: str | None = None
    url_expiry_s: int = 604800
    guard: UrlGuard | None = None  # set on a job's own endpoint, whose connections are checked; None: the worker's


@dataclass(frozen=True)
class Settings:
    comfyui_dir: Path
    comfy_python: str
    work_dir: Path
    num_gpus: int | None
    multi_gpu: bool
    cpu_instances: int
    host: str
    base_port: int
    extra_args: tuple[str, ...]
    extra_model_paths: tuple[Path, ...]
    custom_nodes_dirs: tuple[Path, ...]
    start_timeout_s: float
    restart_dead: bool
    vram_mode: str
    cpu_pinning: bool
    worker_cpus: int
    threads_per_instance: int
    cuda_malloc: str
    cache_flags: tuple[str, ...]
    tf32: bool
    cudnn_benchmark: bool
    torch_compile: str
    torch_compile_mode: str
    compile_cache_dir: Path
    warmup_workflow: str
    prefetch_threads: int
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
    model_cache_dir: Path
    model_cache_max_bytes: int
    model_max_file_bytes: int
    model_download_timeout_s: float
    hf_token: str
    output_mode: str
    output_inline_limit_bytes: int
    local_output_dir: Path | None
    s3: S3Config | None
    log_level: str
    send_progress: bool


OUTPUT_MODES = ("auto", "base64", "s3")
VRAM_MODES = ("auto", "high", "gpu-only", "normal", "dynamic", "low")
COMPILE_BACKENDS = ("auto", "off", "inductor", "cudagraphs", "aot_eager", "eager")
COMPILE_MODES = ("reduce-overhead", "default", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_MALLOC_BACKENDS = ("native", "async")
CACHE_FLAGS = {"classic": ("--cache-classic",), "ram": (), "none": ("--cache-none",)}
NETWORK_VOLUME = Path("/runpod-volume")


def loopback_host(host: str) -> str:
    """COMFY_HOST, refused unless it is a loopback address: ComfyUI has no authentication."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SettingsError(f"COMFY_HOST={host!r} is not a loopback address: ComfyUI has no authentication, so its "
                            "instances listen on 127.0.0.1 only")
    return host


def quiet_runpod_sdk() -> None:
    """Gives the RunPod SDK our RUNPOD_LOG_LEVEL default; call it before `import runpod`, which reads it."""
    os.environ.setdefault("RUNPOD_LOG_LEVEL", "INFO")


def comfy_cache_flags(value: str) -> tuple[str, ...]:
    """COMFY_CACHE → ComfyUI's cache flag."""
    if value in CACHE_FLAGS:
        return CACHE_FLAGS[value]
    size = value.removeprefix("lru:")
    if value.startswith("lru:") and size.isdigit() and int(size) > 0:
        return ("--cache-lru", size)
    raise SettingsError(f"COMFY_CACHE={value!r} is not one of classic, ram, none or lru:N (N > 0)")


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Reads the configuration from `env` (default: the process environment)."""
    env = os.environ if env is None else env
    known = {v.name for v in VARIABLES}

    def raw(name: str) -> str:
        assert name in known, name
        return env.get(name, "").strip()

    def number(name: str, default: float, minimum: float = 0) -> float:
        text = raw(name)
        if not text:
            return default
        try:
            value = float(text)
        except ValueError:
            raise SettingsError(f"{name}={text!r} is not a number") from None
        if value < minimum:
            raise SettingsError(f"{name}={text!r} must be at least {minimum:g}")
        return value

    def integer(name: str, default: int, minimum: int = 0) -> int:
        value = number(name, default, minimum)
        if value != int(value):
            raise SettingsError(f"{name}={raw(name)!r} must be a whole number")
        return int(value)

    def flag(name: str, default: bool) -> bool:
        text = raw(name).lower()
        if not text:
            return default
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name}={text!r} is not a switch: use 1 or 0")

    def choice(name: str, allowed: tuple[str, ...]) -> str:
        value = raw(name).lower() or allowed[0]
        if value not in allowed:
            raise SettingsError(f"{name}={value!r} is not one of {', '.join(allowed)}")
        return value

    def paths(name: str) -> tuple[Path, ...]:
        return tuple(Path(p).expanduser() for p in raw(name).split(os.pathsep) if p)

    output_mode = raw("OUTPUT_MODE").lower() or "auto"
    if output_mode not in OUTPUT_MODES:
        raise SettingsError(f"OUTPUT_MODE={output_mode!r} is not one of {', '.join(OUTPUT_MODES)}")
    num_gpus_text = raw("COMFY_NUM_GPUS")
    vram_mode = choice("COMFY_VRAM_MODE", VRAM_MODES)
    cuda_malloc = choice("COMFY_CUDA_MALLOC", CUDA_MALLOC_BACKENDS)
    work_dir = Path(raw("COMFY_WORK_DIR") or REPO_ROOT / ".work").expanduser()
    compile_cache = raw("COMPILE_CACHE_DIR")
    if compile_cache:
        compile_cache_dir = Path(compile_cache).expanduser()
    elif NETWORK_VOLUME.is_dir():
        compile_cache_dir = NETWORK_VOLUME / ".cache" / "torch-compile"
    else:
        compile_cache_dir = work_dir / "compile-cache"
    torch_compile = raw("TORCH_COMPILE").lower() or "auto"
    if torch_compile in ("0", "false", "no", "none"):
        torch_compile = "off"
    if torch_compile not in COMPILE_BACKENDS:
        raise SettingsError(f"TORCH_COMPILE={torch_compile!r} is not one of {', '.join(COMPILE_BACKENDS)}")
    if torch_compile == "auto":
        torch_compile = "inductor" if raw("WARMUP_WORKFLOW") else "off"
    compile_mode = choice("TORCH_COMPILE_MODE", COMPILE_MODES)
    if compile_mode == "default":
        compile_mode = ""
    local_output = raw("LOCAL_OUTPUT_DIR")
    cache_flags = comfy_cache_flags(raw("COMFY_CACHE").lower() or "classic")

    return Settings(
        comfyui_dir=Path(raw("COMFYUI_DIR") or REPO_ROOT / ".comfyui" / "ComfyUI").expanduser(),
        comfy_python=raw("COMFY_PYTHON") or sys.executable,
        work_dir=work_dir,
        num_gpus=integer("COMFY_NUM_GPUS", 0) if num_gpus_text else None,
        multi_gpu=flag("COMFY_MULTI_GPU_SCHED", True),
        cpu_instances=integer("COMFY_CPU_INSTANCES", 1, minimum=1),
        host=loopback_host(raw("COMFY_HOST") or "127.0.0.1"),
        base_port=integer("COMFY_BASE_PORT", 8188, minimum=1),
        extra_args=tuple(shlex.split(raw("COMFY_EXTRA_ARGS"))),
        extra_model_paths=paths("COMFY_EXTRA_MODEL_PATHS"),
        custom_nodes_dirs=paths("COMFY_CUSTOM_NODES_DIRS"),
        start_timeout_s=number("COMFY_START_TIMEOUT_S", 300, minimum=1),
        restart_dead=flag("COMFY_RESTART_DEAD", True),
        vram_mode=vram_mode,
        cpu_pinning=flag("COMFY_CPU_PINNING", True),
        worker_cpus=integer("COMFY_WORKER_CPUS", 1),
        threads_per_instance=integer("COMFY_THREADS_PER_INSTANCE", 4, minimum=1),
        cuda_malloc=cuda_malloc,
        cache_flags=cache_flags,
        tf32=flag("GPU_TF32", False),
        cudnn_benchmark=flag("GPU_CUDNN_BENCHMARK", False),
        torch_compile=torch_compile,
        torch_compile_mode=compile_mode,
        compile_cache_dir=compile_cache_dir,
        warmup_workflow=raw("WARMUP_WORKFLOW"),
        prefetch_threads=integer("MODEL_PREFETCH_THREADS", 8),
        job_timeout_s=number("JOB_TIMEOUT_S", 1800, minimum=1),
        max_workflow_nodes=integer("MAX_WORKFLOW_NODES", 1000, minimum=1),
        max_request_bytes=int(number("MAX_REQUEST_MB", 100, minimum=0.001) * 1_000_000),
        max_output_bytes=int(number("MAX_OUTPUT_MB", 2000, minimum=0.001) * 1_000_000),
        websocket_quiet_s=number("WEBSOCKET_QUIET_S", 2, minimum=0.1),
        max_input_file_bytes=int(number("MAX_INPUT_FILE_MB", 50, minimum=0.001) * 1_000_000),
        input_url_timeout_s=number("INPUT_URL_TIMEOUT_S", 30, minimum=1),
        url_guard=_url_guard(raw("ALLOW_PRIVATE_URLS")),
        progress_interval_s=number("PROGRESS_INTERVAL_S", 1),
        metrics_log_every=integer("METRICS_LOG_EVERY", 10, minimum=1),
        retry_lost_jobs=flag("RETRY_LOST_JOBS", True),
        retry_out_of_memory=flag("RETRY_OUT_OF_MEMORY", True),
        hung_instance_s=number("HUNG_INSTANCE_S", 30, minimum=1),
        refresh_worker=flag("REFRESH_WORKER", False),
        model_cache_dir=Path(raw("MODEL_CACHE_DIR")).expanduser() if raw("MODEL_CACHE_DIR") else (
            NETWORK_VOLUME / ".cache" / "comfy-worker-models" if NETWORK_VOLUME.is_dir() else work_dir / "model-cache"),
        model_cache_max_bytes=int(number("MODEL_CACHE_MAX_GB", 100, minimum=0.000001) * 1e9),
        model_max_file_bytes=int(number("MODEL_MAX_FILE_GB", 50, minimum=0.000001) * 1e9),
        model_download_timeout_s=number("MODEL_DOWNLOAD_TIMEOUT_S", 3600, minimum=1),
        hf_token=raw("HF_TOKEN"),
        output_mode=output_mode,
        output_inline_limit_bytes=int(number("OUTPUT_INLINE_LIMIT_MB", 10, minimum=0) * 1_000_000),
        local_output_dir=Path(local_output).expanduser() if local_output else None,
        s3=_s3_from(raw, integer),
        log_level=(raw("LOG_LEVEL") or "INFO").upper(),
        send_progress=bool(raw("RUNPOD_WEBHOOK_POST_OUTPUT")),
    )


def _url_guard(text: str) -> UrlGuard:
    try:
        return UrlGuard.parse(text)
    except ValueError as error:
        raise SettingsError(f"ALLOW_PRIVATE_URLS: {error}; use 1, or hosts and CIDR ranges separated by "
                            "commas") from None


def _s3_from(raw, integer) -> S3Config | None:
    endpoint = raw("BUCKET_ENDPOINT_URL")
    key_id, secret = raw("BUCKET_ACCESS_KEY_ID"), raw("BUCKET_SECRET_ACCESS_KEY")
    if not endpoint:
        return None
    if not (key_id and secret):
        raise SettingsError("BUCKET_ENDPOINT_URL is set but BUCKET_ACCESS_KEY_ID or BUCKET_SECRET_ACCESS_KEY is not")
    endpoint, bucket = split_bucket_endpoint(endpoint, raw("BUCKET_NAME"))
    return S3Config(
        endpoint_url=endpoint,
        access_key_id=key_id,
        secret_access_key=secret,
        bucket=bucket,
        prefix=raw("BUCKET_PREFIX").strip("/"),
        region=raw("BUCKET_REGION") or None,
        url_expiry_s=integer("BUCKET_URL_EXPIRY_S", 604800, minimum=1),
    )


def split_bucket_endpoint(endpoint: str, bucket: str) -> tuple[str, str]:
    """Returns (endpoint, bucket). Without a bucket name, worker-comfyui's style applies: the endpoint's first host
    label names the bucket (https://my-bucket.s3.eu-west-1.amazonaws.com → my-bucket at https://s3.eu-west-1...)."""
    if bucket:
        return endpoint, bucket
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    label, _, rest = host.partition(".")
    if not rest or label.isdigit():
        raise SettingsError(
            f"BUCKET_NAME is empty and the endpoint {endpoint!r} does not start with a bucket name: set BUCKET_NAME"
        )
    netloc = rest + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", "")), label
