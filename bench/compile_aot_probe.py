"""Can a fresh process skip dynamo's trace of the UNet? PyTorch's AOT compile (a whole-graph compile saved with its
guards) against the Mega-Cache (caches filled, dynamo still traces), on ComfyUI's own SDXL UNet and sampler.

    python bench/compile_aot_probe.py --comfy COMFYUI_DIR --work DIR --out FILE.json [--size sdxl|tiny]
                                      [--device cuda|cpu] [--steps 20]

Three child processes, each with empty inductor/triton cache folders of its own (nothing carried but the artefact):
  prime  eager sampling, then the AOT compile of the UNet (inductor, cudagraphs on CUDA) on the arguments of its first
         call → saved with its guards, and the Mega-Cache of the caches it filled;
  mega   Mega-Cache loaded, ComfyUI's compile wrapper (as the worker does today): the first sampling traces with
         dynamo and hits the caches;
  aot    AOT artefact loaded: the first sampling calls the compiled graph after a guard check, no trace;
  both   Mega-Cache and AOT artefact loaded (kernels from the first, the graph and guards from the second);
  aotgraph  as aot, with one CUDA graph per input shape captured around the loaded graph (which comes back
         without inductor's CUDA graphs: the aot role's steady sampling is launch-bound).
Each reports the seconds from its own start to the end of its first sampling (the part of P7c the compile decides),
its steady seconds per sampling, and the largest difference of its latent from the eager latent (same seeds).

The guards kept are those a saved artefact can hold (tensors, the arguments' dict keys and constants, module
attributes); guards on classes, globals and closures are dropped (dynamo cannot save them), so the artefact is only
valid for the model class, ComfyUI version and settings it was made with: its key must hold them. Two patches work
around torch 2.11 defects, both named in the code.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

STARTED = time.perf_counter()

SDXL_UNET = {"model_channels": 320, "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10],
             "channel_mult": [1, 2, 4], "transformer_depth_middle": 10, "transformer_depth_output":
             [0, 0, 0, 2, 2, 2, 10, 10, 10], "context_dim": 2048, "num_head_channels": 64}
TINY_UNET = {"model_channels": 32, "num_res_blocks": [1, 1], "transformer_depth": [0, 1], "channel_mult": [1, 2],
             "transformer_depth_middle": 1, "transformer_depth_output": [0, 0, 1, 1], "context_dim": 64,
             "num_head_channels": 16}
COMMON_UNET = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
               "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4,
               "use_linear_in_transformer": True, "use_temporal_attention": False, "use_temporal_resblock": False}
UNSAVABLE_GUARDS = {"DICT_VERSION", "NN_MODULE", "ID_MATCH", "FUNCTION_MATCH", "CLASS_MATCH", "MODULE_MATCH",
                    "CLOSURE_MATCH", "WEAKREF_ALIVE", "TYPE_MATCH", "BUILTIN_MATCH"}


def savable_guard(entry) -> bool:
    return (entry.guard_type not in UNSAVABLE_GUARDS and not entry.is_global and "G[" not in entry.name
            and "__closure__" not in entry.name and "__mro__" not in entry.name)


def guard_filter(entries) -> list[bool]:
    return [savable_guard(entry) for entry in entries]


def patch_guard_pickler(torch) -> None:
    """torch 2.11 defect: the guard pickler marks a module's plain attributes as missing by id(), so a module's
    `dtype = torch.float16` makes every later float16 in the guards unpicklable (_Missing). Singletons pickle
    as themselves here."""
    import torch._dynamo.guards as guards

    original = guards.GuardsStatePickler.reducer_override

    def reducer_override(self, obj):
        if isinstance(obj, (torch.dtype, torch.device, torch.layout, torch.memory_format, bool, int, float, str,
                            type(None))):
            return NotImplemented
        return original(self, obj)

    guards.GuardsStatePickler.reducer_override = reducer_override


def child(args: argparse.Namespace) -> dict:
    sys.path.insert(0, args.comfy)
    sys.argv = [sys.argv[0]] + (["--cpu", "--use-pytorch-cross-attention"] if args.device == "cpu" else [])
    import comfy.options
    import torch
    comfy.options.enable_args_parsing()
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sample
    import comfy.supported_models
    from comfy.patcher_extension import WrappersMP
    from comfy_api.torch_helpers import set_torch_compile_wrapper

    report: dict = {"role": args.role, "import_s": round(time.perf_counter() - STARTED, 2)}
    cuda = args.device == "cuda"
    dtype = torch.float16 if cuda else torch.float32
    torch.manual_seed(0)
    config = comfy.supported_models.SDXL({**COMMON_UNET, **(SDXL_UNET if args.size == "sdxl" else TINY_UNET)})
    config.set_inference_dtype(dtype, None)
    model = config.get_model({}, device=mm.get_torch_device())  # built where it runs: a CPU init of 2.6 B takes 70 s
    for parameter in model.diffusion_model.parameters():
        torch.nn.init.normal_(parameter, std=0.02)
    model.diffusion_model.to(dtype)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    mm.load_models_gpu([patcher])
    report["model_s"] = round(time.perf_counter() - STARTED, 2)

    side = 128 if args.size == "sdxl" else 16
    context_dim = (SDXL_UNET if args.size == "sdxl" else TINY_UNET)["context_dim"]
    generator = torch.Generator().manual_seed(1)
    positive = [[torch.randn(1, 77, context_dim, generator=generator), {"pooled_output": torch.randn(1, 1280)}]]
    negative = [[torch.randn(1, 77, context_dim, generator=generator), {"pooled_output": torch.randn(1, 1280)}]]
    latent = torch.zeros(1, 4, side, side)
    noise = torch.randn(1, 4, side, side, generator=generator)

    def sample() -> tuple[float, torch.Tensor]:
        if cuda:
            torch.cuda.synchronize()
        began = time.perf_counter()
        with torch.no_grad():
            out = comfy.sample.sample(patcher, noise, args.steps, 7.0, "euler", "normal", positive, negative, latent,
                                      seed=1, disable_pbar=True)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - began, out.float().cpu()

    def timed_runs(label: str) -> torch.Tensor:
        first, out = sample()
        report[f"{label}_first_sample_s"] = round(first, 3)
        report[f"{label}_first_done_after_start_s"] = round(time.perf_counter() - STARTED, 2)
        steady = [round(sample()[0], 4) for _ in range(5)]
        report[f"{label}_steady_samples_s"] = steady
        report[f"{label}_steady_sample_s"] = sorted(steady)[len(steady) // 2]
        return out

    eager_path = Path(args.work) / "eager_latent.pt"
    artefacts = {"mega": Path(args.work) / "sdxl.megacache", "aot": Path(args.work) / "sdxl.aot"}
    mode_options = {"triton.cudagraphs": True} if cuda else {}

    if args.role == "prime":
        torch.save(timed_runs("eager"), eager_path)

    if args.role in ("mega", "both"):
        began = time.perf_counter()
        torch.compiler.load_cache_artifacts(artefacts["mega"].read_bytes())
        report["mega_load_s"] = round(time.perf_counter() - began, 2)
    if args.role == "mega":
        set_torch_compile_wrapper(patcher, backend="inductor", mode="reduce-overhead" if cuda else None)
        out = timed_runs("mega")
        report["max_diff"] = float((out - torch.load(eager_path)).abs().max())
        from torch._dynamo.utils import compilation_time_metrics
        report["dynamo_compile_s"] = round(sum(compilation_time_metrics.get("_compile.compile_inner", [])), 2)

    if args.role in ("prime", "aot", "both", "aotgraph"):
        from torch._dynamo.aot_compile import ModelInput

        torch._dynamo.config.enable_aot_compile = True
        patch_guard_pickler(torch)
        unet = model.diffusion_model
        compiled = torch.compile(unet, backend="inductor", fullgraph=True,
                                 options={**mode_options, "guard_filter_fn": guard_filter})
        state = {"calls": 0, "fallbacks": 0, "compile_s": None}
        if args.role != "prime":
            began = time.perf_counter()
            compiled._load_aot_compiled_module(artefacts["aot"].read_bytes())
            report["aot_load_s"] = round(time.perf_counter() - began, 2)

        def run_unet(*call_args, **call_kwargs):
            state["calls"] += 1
            if args.role == "prime" and state["compile_s"] is None:
                began = time.perf_counter()
                trace_kwargs = {**call_kwargs, "transformer_options": dict(call_kwargs["transformer_options"])}
                compiled._aot_compile([ModelInput(args=call_args, kwargs=trace_kwargs, contexts=[])])
                state["compile_s"] = round(time.perf_counter() - began, 2)
            result = compiled.forward.compiled_results[0]
            if not result.guard_check(unet, *call_args, **call_kwargs):
                state["fallbacks"] += 1
                return unet(*call_args, **call_kwargs)
            if args.role == "aotgraph":
                return graphed(result, call_args, call_kwargs)
            return result(unet, *call_args, **call_kwargs)

        graphs: dict = {}

        def graphed(result, call_args, call_kwargs):
            """The loaded graph comes back without inductor's CUDA graphs (torch 2.11): one CUDA graph per input
            shape, captured here, with the call's top-level tensors copied into its static inputs."""
            names = [i for i, value in enumerate(call_args) if isinstance(value, torch.Tensor)]
            keys = [k for k, value in call_kwargs.items() if isinstance(value, torch.Tensor)]
            signature = tuple((tuple(call_args[i].shape), call_args[i].dtype) for i in names) + tuple(
                (k, tuple(call_kwargs[k].shape), call_kwargs[k].dtype) for k in keys)
            entry = graphs.get(signature)
            if entry is None:
                static_args = [a.clone() if isinstance(a, torch.Tensor) else a for a in call_args]
                static_kwargs = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in call_kwargs.items()}
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    result(unet, *static_args, **{**static_kwargs, "transformer_options":
                                                  dict(static_kwargs["transformer_options"])})
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    static_out = result(unet, *static_args, **{**static_kwargs, "transformer_options":
                                                               dict(static_kwargs["transformer_options"])})
                entry = graphs[signature] = (graph, static_args, static_kwargs, static_out)
                state["graphs"] = len(graphs)
            graph, static_args, static_kwargs, static_out = entry
            for i in names:
                static_args[i].copy_(call_args[i])
            for k in keys:
                static_kwargs[k].copy_(call_kwargs[k])
            graph.replay()
            return static_out.clone()

        class AotUNet(torch.nn.Module):  # like OptimizedModule: a module that reads the UNet's attributes
            def forward(self, *call_args, **call_kwargs):
                return run_unet(*call_args, **call_kwargs)

            def __getattr__(self, name):
                return getattr(unet, name)

        aot_unet = AotUNet()

        def aot_wrapper(executor, *call_args, **call_kwargs):
            base = executor.class_obj
            original = base.diffusion_model
            base.diffusion_model = aot_unet
            try:
                return executor(*call_args, **call_kwargs)
            finally:
                base.diffusion_model = original

        patcher.add_wrapper_with_key(WrappersMP.APPLY_MODEL, "aot", aot_wrapper)
        out = timed_runs("aot")
        report["max_diff"] = float((out - torch.load(eager_path)).abs().max())
        report.update(aot_compile_s=state["compile_s"], unet_calls=state["calls"], guard_fallbacks=state["fallbacks"],
                      cuda_graphs=state.get("graphs"))
        if args.role == "prime":
            data = compiled._save_aot_compiled_module(str(artefacts["aot"]))
            report["aot_bytes"] = len(data)
            saved = torch.compiler.save_cache_artifacts()  # the caches the AOT compile filled (kernels, autotune)
            artefacts["mega"].write_bytes(saved[0])
            report["mega_bytes"] = len(saved[0])

    from torch._dynamo.utils import counters
    report["dynamo_frames"] = dict(counters.get("frames", {}))
    report["cache_counters"] = {key: value for group in ("inductor", "aot_autograd")
                                for key, value in counters.get(group, {}).items()
                                if "cache" in key or "cudagraph" in key}
    report["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfy", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--out")
    parser.add_argument("--size", choices=("sdxl", "tiny"), default="sdxl")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--role", choices=("prime", "mega", "aot", "both", "aotgraph"))
    parser.add_argument("--roles", default="prime,mega,aot,both", help="the children to run, in order")
    args = parser.parse_args()
    if args.role:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"command": " ".join(sys.argv), "roles": {}}
    for role in args.roles.split(","):
        caches = work / f"caches-{role}"
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(caches / "inductor"),
               "TRITON_CACHE_DIR": str(caches / "triton")}
        command = [sys.executable, __file__, "--comfy", args.comfy, "--work", args.work, "--size", args.size,
                   "--device", args.device, "--steps", str(args.steps), "--role", role]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        results["roles"][role] = (json.loads(lines[-1][7:]) if lines else
                                  {"error": f"exit {done.returncode}", "tail": (done.stdout + done.stderr)[-3000:]})
        print(role, json.dumps(results["roles"][role])[:1500], flush=True)
        if args.out:  # after each child: a deadline that stops the run keeps what was measured
            Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
