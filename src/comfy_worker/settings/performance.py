"""GPU performance: VRAM mode, CPU pinning, allocator, compile, read-ahead, warm-up (defaults are the measured
best: docs/benchmarks/README.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from comfy_worker.settings.reader import NETWORK_VOLUME, EnvReader, SettingsError, Variable

PERFORMANCE = (
    Variable("COMFY_VRAM_MODE", "auto",
             "auto, high, gpu-only, normal, dynamic or low. auto: chosen per job from its own model files: "
             "--highvram where they fit the card, ComfyUI's dynamic loading from the model file where not "
             "(--fast-disk: the page cache every instance shares, not a private pinned copy; the instance restarts "
             "to switch, 13-24 s, reported in the job's warnings). dynamic: ComfyUI's own dynamic loading with a "
             "pinned copy in each instance's RAM.", "performance"),
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
    Variable("COMPILE_ARTIFACT_DIR", "<COMPILE_CACHE_DIR>/artifacts",
             "Where the portable compile artefacts (PyTorch Mega-Cache, one per GPU type, torch/CUDA/ComfyUI "
             "version, compile settings and warm-up models) are kept: `python -m comfy_worker.prime` writes one, "
             "an instance that finds its own loads it before the warm-up, whose compile then hits every cache "
             "(SDXL on an H200: ready compiled 43.9 s after the start instead of ≈ 200 s).",
             "performance"),
    Variable("COMPILE_IN_BACKGROUND", "1",
             "With compile on and no artefact: 1 serves uncompiled at once while a one-off primer process on GPU 0 "
             "compiles and saves the artefact, then each idle instance loads it and switches to compiled; 0 "
             "compiles during the warm-up, before the first job.", "performance"),
    Variable("MODEL_PREFETCH_THREADS", "8",
             "Readers that load a job's model files into the page cache as soon as the job arrives (and the "
             "warm-up workflow's at start), so ComfyUI finds them cached; 0 turns read-ahead off.", "performance"),
    Variable("FAST_MODEL_LOAD_THREADS", "8",
             "Readers that load a diffusion model file (UNETLoader) straight into GPU memory through pinned buffers, "
             "on an instance in the high-VRAM mode with room for the file twice; elsewhere, and for checkpoints, "
             "ComfyUI's own loader runs. 0 turns it off (docs/benchmarks/video.md: cold start).", "performance"),
    Variable("GPU_BUSY_SAMPLE_MS", "100",
             "How often the worker reads each GPU's utilization from NVML (the driver's own samples, every 200 ms "
             "on an H200, where the GPU keeps them), for `timings.gpu_busy_pct` and the metrics' "
             "`gpu_busy_pct_60s` and `gpu_busy_pct_total`; 0 turns sampling off (the figures are then null).",
             "performance"),
    Variable("WARMUP_WORKFLOW", "",
             "A workflow (a file path or inline JSON, API format) run on every instance at start.", "performance"),
)

VRAM_MODES = ("auto", "high", "gpu-only", "normal", "dynamic", "low")
COMPILE_BACKENDS = ("auto", "off", "inductor", "cudagraphs", "aot_eager", "eager")
COMPILE_MODES = ("reduce-overhead", "default", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_MALLOC_BACKENDS = ("native", "async")


@dataclass(frozen=True)
class PerformanceSettings:
    vram_mode: str
    cpu_pinning: bool
    worker_cpus: int
    threads_per_instance: int
    cuda_malloc: str
    tf32: bool
    cudnn_benchmark: bool
    torch_compile: str
    torch_compile_mode: str
    compile_cache_dir: Path
    compile_artifact_dir: Path
    compile_in_background: bool
    warmup_workflow: str
    prefetch_threads: int
    fast_load_threads: int
    gpu_busy_sample_ms: int

    @classmethod
    def read(cls, env: EnvReader) -> PerformanceSettings:
        compile_mode = env.choice("TORCH_COMPILE_MODE", COMPILE_MODES)
        compile_cache_dir = _compile_cache_dir(env)
        artifact_dir = env.raw("COMPILE_ARTIFACT_DIR")
        return cls(
            vram_mode=env.choice("COMFY_VRAM_MODE", VRAM_MODES),
            cpu_pinning=env.flag("COMFY_CPU_PINNING", True),
            worker_cpus=env.integer("COMFY_WORKER_CPUS", 1),
            threads_per_instance=env.integer("COMFY_THREADS_PER_INSTANCE", 4, minimum=1),
            cuda_malloc=env.choice("COMFY_CUDA_MALLOC", CUDA_MALLOC_BACKENDS),
            tf32=env.flag("GPU_TF32", False),
            cudnn_benchmark=env.flag("GPU_CUDNN_BENCHMARK", False),
            torch_compile=_torch_compile(env),
            torch_compile_mode="" if compile_mode == "default" else compile_mode,
            compile_cache_dir=compile_cache_dir,
            compile_artifact_dir=Path(artifact_dir).expanduser() if artifact_dir else compile_cache_dir / "artifacts",
            compile_in_background=env.flag("COMPILE_IN_BACKGROUND", True),
            warmup_workflow=env.raw("WARMUP_WORKFLOW"),
            prefetch_threads=env.integer("MODEL_PREFETCH_THREADS", 8),
            fast_load_threads=env.integer("FAST_MODEL_LOAD_THREADS", 8),
            gpu_busy_sample_ms=env.integer("GPU_BUSY_SAMPLE_MS", 100),
        )


def _torch_compile(env: EnvReader) -> str:
    torch_compile = env.raw("TORCH_COMPILE").lower() or "auto"
    if torch_compile in ("0", "false", "no", "none"):
        torch_compile = "off"
    if torch_compile not in COMPILE_BACKENDS:
        raise SettingsError(f"TORCH_COMPILE={torch_compile!r} is not one of {', '.join(COMPILE_BACKENDS)}")
    if torch_compile == "auto":
        return "inductor" if env.raw("WARMUP_WORKFLOW") else "off"
    return torch_compile


def _compile_cache_dir(env: EnvReader) -> Path:
    if env.raw("COMPILE_CACHE_DIR"):
        return Path(env.raw("COMPILE_CACHE_DIR")).expanduser()
    if NETWORK_VOLUME.is_dir():
        return NETWORK_VOLUME / ".cache" / "torch-compile"
    return env.work_dir() / "compile-cache"
