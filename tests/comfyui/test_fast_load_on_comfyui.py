"""The tuning node's fast load of diffusion models (fast_load.py) inside a real ComfyUI CPU instance: the model a
workflow loads holds exactly the file's weights, whether they are taken as read or copied into the model's dtype."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import requests
import torch
from safetensors.torch import load_file

from comfy_worker.fleet.tuning import node_request

pytestmark = pytest.mark.comfyui

REPO = Path(__file__).resolve().parents[2]
TINY_WAN = dict(dim=256, ffn_dim=512, num_heads=2, num_layers=1)  # still detected as Wan 2.1 T2V


TINY_FLUX = """
from comfy.ldm.flux.model import Flux
import comfy.ops
with torch.device("meta"):
    module = Flux(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096,
                  mlp_ratio=4.0, axes_dim=[16, 56, 56], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True,
                  txt_ids_dims=[], hidden_size=256, num_heads=2, depth=1, depth_single_blocks=1, dtype=dtype,
                  device="meta", operations=comfy.ops.disable_weight_init)
specs = meta_specs(module, dtype)
"""


def write_tiny_model(comfyui_dir: Path, path: Path, dtype: str, kind: str = "wan") -> None:
    """A Wan 2.1 T2V (or Flux.1-dev) key set from ComfyUI's own class, random values, in `dtype`. Flux's norm
    weights are named `….scale`, as in the published files (ComfyUI renames them when it loads)."""
    build = f"specs = meta_specs(meta_wan('t2v', {TINY_WAN!r}, dtype), dtype)" if kind == "wan" else TINY_FLUX
    code = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(comfyui_dir)!r}, {str(REPO / "bench" / "video")!r}]
        import torch
        import comfy.cli_args
        comfy.cli_args.args.cpu = True
        from model_writer import meta_specs, meta_wan
        from safetensors.torch import save_file
        dtype = getattr(torch, {dtype!r})
        generator = torch.Generator().manual_seed(3)
    """) + build + textwrap.dedent(f"""
        def published(name):
            return name[:-len(".weight")] + ".scale" if name.endswith("_norm.weight") else name
        values = {{published(name): torch.randn(shape, generator=generator).to(dtype) for name, shape, _ in specs}}
        save_file(values, {str(path)!r})
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=comfyui_dir)


def run_prompt(client, workflow: dict, timeout_s: float = 120) -> dict:
    prompt_id, _ = client.submit(workflow, uuid.uuid4().hex, {})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        entry = client.history(prompt_id)
        if entry is not None:
            return entry
        time.sleep(0.2)
    raise AssertionError(f"prompt {prompt_id} did not finish in {timeout_s} s")


@pytest.mark.parametrize("kind, dtype, converted", [("wan", "float32", False), ("wan", "float16", True),
                                                     ("flux", "float32", False)])
def test_a_fast_loaded_model_holds_exactly_the_files_weights(worker, comfyui_dir, kind, dtype, converted):
    instance = worker.fleet.instances[0]
    name = f"fast_load_tiny_{kind}_{dtype}_{uuid.uuid4().hex[:6]}.safetensors"
    source = worker.model_cache.models / "diffusion_models" / name
    write_tiny_model(comfyui_dir, source, dtype, kind)
    prefix = f"diffusion_models/fast_load_{kind}_{dtype}_{uuid.uuid4().hex[:6]}"
    workflow = {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": name, "weight_dtype": "default"}},
                "2": {"class_type": "ModelSave", "inputs": {"model": ["1", 0], "filename_prefix": prefix}}}
    try:
        state = instance.client.apply_tuning({**node_request(worker.settings, False),
                                              "fast_load": {"threads": 3, "force": True}})
        assert "✓ Fast load of diffusion models to the GPU (3 readers)" in state["applied"]
        entry = run_prompt(instance.client, workflow)
        assert entry["status"]["status_str"] == "success", entry["status"]
        loads = requests.get(f"{instance.client.base_url}/worker/tuning", timeout=10).json()["fast_load"]["loads"]
        [load] = [record for record in loads if record["file"] == name]
    finally:
        instance.switches = instance.client.apply_tuning(node_request(worker.settings, False))
        instance.client.free_memory()
    # ComfyUI on the CPU makes a float32 model: a float32 file's tensors become its weights as read, a float16
    # file's are converted to float32 first
    tensors = len(load_file(str(source)))
    assert load["weights_taken_as_read"] is True and load["dtype_converted"] == (tensors if converted else 0)
    assert load["bytes"] == source.stat().st_size - (8 + int.from_bytes(source.read_bytes()[:8], "little"))
    saved_files = list((instance.dirs.output / "diffusion_models").glob(f"{Path(prefix).name}*.safetensors"))
    try:
        [saved] = saved_files
        written, expected = load_file(str(saved)), load_file(str(source))
    finally:  # other tests check that no job leaves files behind on the instance
        for leftover in [*saved_files, source]:
            leftover.unlink(missing_ok=True)
    prefixed = {key.removeprefix("model.diffusion_model."): value for key, value in written.items()}
    as_loaded = {key.removesuffix(".scale") + ".weight" if key.endswith("_norm.scale") else key: value
                 for key, value in expected.items()}  # Flux's norms, renamed by ComfyUI as it loads them
    assert as_loaded.keys() <= prefixed.keys()
    for key, value in as_loaded.items():
        assert torch.equal(prefixed[key].float(), value.float()), key
