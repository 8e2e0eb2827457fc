"""What the image and the RunPod Hub listing promise, checked against the code and the pinned ComfyUI."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from comfy_worker.settings import REPO_ROOT, VARIABLES

VARIABLE_NAMES = {v.name for v in VARIABLES}


def pinned_comfyui_version() -> str:
    setup = (REPO_ROOT / "scripts/setup.sh").read_text()
    assert re.search(r"^COMFYUI_VERSION=\$\{COMFYUI_VERSION:-\$DEFAULT_COMFYUI_VERSION\}$", setup, re.MULTILINE)
    return re.search(r"^DEFAULT_COMFYUI_VERSION=(\S+)", setup, re.MULTILINE)[1]


@pytest.mark.comfyui
def test_the_network_volume_config_maps_every_model_folder_of_the_pinned_comfyui(comfyui_dir):
    script = "import folder_paths, json; print(json.dumps(sorted(folder_paths.folder_names_and_paths)))"
    listing = subprocess.run(
        [sys.executable, "-c", script],
        cwd=comfyui_dir, capture_output=True, text=True, check=True,
    )
    comfy_folders = set(json.loads(listing.stdout.strip().splitlines()[-1])) - {"custom_nodes"}
    config = yaml.safe_load((REPO_ROOT / "config/network_volume.yaml").read_text())
    volume = config["runpod_volume"]
    assert volume["base_path"] == "/runpod-volume/models"
    assert comfy_folders <= set(volume), f"not mapped: {sorted(comfy_folders - set(volume))}"
    assert volume["text_encoders"].split() == ["text_encoders", "clip"]
    assert volume["diffusion_models"].split() == ["diffusion_models", "unet"]
    assert config["runpod_volume_custom_nodes"] == {"base_path": "/runpod-volume", "custom_nodes": "custom_nodes"}


def test_the_hub_listing_offers_only_variables_the_worker_reads_and_several_gpus():
    hub = json.loads((REPO_ROOT / ".runpod/hub.json").read_text())
    offered = [item["key"] for item in hub["config"]["env"]]
    ignored = set(offered) - VARIABLE_NAMES
    assert not ignored, f"the hub offers variables the worker ignores: {ignored}"
    assert hub["config"]["gpuCount"] > 1
    assert all(item["input"]["description"] for item in hub["config"]["env"])
    tests = json.loads((REPO_ROOT / ".runpod/tests.json").read_text())
    test_input = json.loads((REPO_ROOT / "test_input.json").read_text())
    assert tests["tests"][0]["input"] == test_input["input"]


def test_the_image_pins_what_the_setup_script_pins_and_execs_the_worker():
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert f"ARG COMFYUI_VERSION={pinned_comfyui_version()}" in dockerfile
    cuda = re.search(r"FROM nvidia/cuda:(\d+)\.(\d+)", dockerfile)
    assert (int(cuda[1]), int(cuda[2])) >= (12, 8), "CUDA 12.8 or newer runs Blackwell cards"
    assert "COMFY_EXTRA_MODEL_PATHS=/app/config/network_volume.yaml" in dockerfile
    assert re.search(r'^CMD \["/app/start.sh"\]', dockerfile, re.MULTILINE)
    assert "python3.12 -m venv /opt/venv" in dockerfile and "PATH=/opt/venv/bin:$PATH" in dockerfile
    start = (REPO_ROOT / "start.sh").read_text()
    assert re.search(r"^exec .*handler\.py", start, re.MULTILINE), "start.sh must exec the worker so signals reach it"
    bake = (REPO_ROOT / "docker-bake.hcl").read_text()
    assert f'default = "{pinned_comfyui_version()}"' in bake
    torch_index = re.search(r"^ARG TORCH_INDEX=(\S+)", dockerfile, re.MULTILINE)[1]
    assert torch_index.endswith("/cu128") and f'variable "TORCH_INDEX" {{ default = "{torch_index}" }}' in bake
    assert len(re.findall(r"TORCH_INDEX\s*=\s*TORCH_INDEX", bake)) == 2, "both bake targets pass the torch build"


@pytest.mark.comfyui
def test_what_the_docs_say_of_comfyuis_code_is_still_in_it(comfyui_dir):
    """docs/deployment.md quotes the condition that turns comfy-kitchen's CUDA backend off; slow_paths.py parses two
    of ComfyUI's log lines. A ComfyUI under test (`make test-comfyui`) that changed either fails here."""
    quant_ops = (comfyui_dir / "comfy/quant_ops.py").read_text()
    assert 'if cuda_version < (13,):\n            ck.registry.disable("cuda")' in quant_ops
    assert "if cuda_version < (13,):" in (REPO_ROOT / "docs/deployment.md").read_text()
    patcher = (comfyui_dir / "comfy/model_patcher.py").read_text()
    assert "prepared for dynamic VRAM loading. {allocated_size // (1024 ** 2)}MB Staged." in patcher
    assert '"loaded partially; {} {:.2f} MB loaded, {:.2f} MB offloaded' in patcher


def test_make_test_comfyui_asks_for_the_comfyui_to_test(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "UNDER_TEST_DIR": str(tmp_path / "under-test")}
    run = subprocess.run([REPO_ROOT / "scripts/test_comfyui.sh"], env=env, capture_output=True, text=True)
    assert run.returncode == 1 and "COMFYUI_SRC=/path/to/ComfyUI make test-comfyui" in run.stderr
    assert not (tmp_path / "under-test").exists()


def test_the_image_installs_the_versions_the_tests_ran_with():
    def pins(path: str) -> dict[str, str]:
        lines = (REPO_ROOT / path).read_text().splitlines()
        found = (re.match(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==(\S+)", line) for line in lines)
        return {m[1].lower().replace("_", "-"): m[2] for m in found if m}

    locked = pins("constraints.txt")
    for name, version in pins("requirements.txt").items():
        assert locked.get(name) == version, f"{name}: requirements.txt {version}, constraints.txt {locked.get(name)}"
    assert not set(pins("requirements-torch.txt")) & set(locked), "torch is pinned by requirements-torch.txt alone"
    assert "-c constraints.txt" in (REPO_ROOT / "Dockerfile").read_text()


def test_every_variable_start_sh_reads_is_documented():
    start = (REPO_ROOT / "start.sh").read_text()
    read = set(re.findall(r"\$\{([A-Z][A-Z0-9_]+)(?::-[^}]*)?\}", start))
    external = {"PYTHON", "PYTORCH_CUDA_ALLOC_CONF", "CUDA_LAUNCH_BLOCKING", "BASH_SOURCE"}
    assert read - external <= VARIABLE_NAMES, f"undocumented: {read - external - VARIABLE_NAMES}"


@pytest.mark.parametrize("page", ["configuration", "deployment", "architecture", "customization", "development",
                                  "reliability"])
def test_the_docs_pages_exist_and_are_linked_from_the_readme(page):
    assert (REPO_ROOT / "docs" / f"{page}.md").is_file()
    assert f"docs/{page}.md" in (REPO_ROOT / "README.md").read_text()
