"""extra_model_paths.yaml, read (the worker's model roots) and written (the model cache's and the custom nodes'
files), with paths that a line-based reading breaks: spaces, quotes, colons, `#`."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from comfy_worker.fleet.fleet import write_custom_nodes_config
from comfy_worker.fleet.vram import model_roots
from comfy_worker.models.cache import ModelCache
from comfy_worker.models.files import find_model_file
from comfy_worker.models.sources import Credentials, http_request
from comfy_worker.models.urls import ModelRef
from comfy_worker.settings import load_settings
from comfy_worker.url_guard import UrlGuard

AWKWARD = ("my models", "it's \"quoted\"", "v2: final", "#1 # not a comment", "-dash", "ünïcode")
COMFYUI = Path("/opt/ComfyUI")


def awkward_dir(parent: Path, name: str) -> Path:
    folder = parent / name
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "model.safetensors").write_bytes(b"weights")
    return folder


@pytest.mark.parametrize("name", AWKWARD)
def test_a_base_path_with_awkward_characters_is_read_as_yaml_means_it(tmp_path: Path, name: str):
    base = awkward_dir(tmp_path, name)
    config = tmp_path / "extra.yaml"
    config.write_text(yaml.safe_dump({"volume": {"base_path": str(base), "checkpoints": "checkpoints"}}))
    roots = model_roots(COMFYUI, [config])
    assert roots == [COMFYUI / "models", base]
    assert find_model_file("model.safetensors", roots) == base / "checkpoints" / "model.safetensors"


def test_hand_written_quoting_styles_and_comments(tmp_path: Path):
    config = tmp_path / "extra.yaml"
    config.write_text(
        "a:\n  base_path: '/data/it''s here'  # single quotes, a doubled quote\n"
        'b:\n  base_path: "/data/tab\\there: yes"\n'
        "c:\n  base_path: /data/plain # a comment\n"
        "d:\n  base_path: >-\n    /data/folded\n"
    )
    assert model_roots(COMFYUI, [config])[1:] == [Path("/data/it's here"), Path("/data/tab\there: yes"),
                                                  Path("/data/plain"), Path("/data/folded")]


def test_sections_without_base_path_and_nested_folders_are_searched(tmp_path: Path):
    absolute = awkward_dir(tmp_path, "absolute root")
    relative = awkward_dir(tmp_path / "configs", "beside the file")
    webui = tmp_path / "webui: 1"
    (webui / "models" / "Stable-diffusion").mkdir(parents=True)
    config = tmp_path / "configs" / "extra.yaml"
    config.write_text(yaml.safe_dump({
        "no_base": {"checkpoints": f"{absolute / 'checkpoints'}\nbeside the file/checkpoints\n",
                    "custom_nodes": "/elsewhere/custom_nodes"},
        "a1111": {"base_path": "../webui: 1", "checkpoints": "models/Stable-diffusion", "is_default": True},
        "empty": None,
    }, sort_keys=False))
    roots = model_roots(COMFYUI, [config])
    assert roots == [COMFYUI / "models", absolute, relative, webui, webui / "models"]
    (webui / "models" / "Stable-diffusion" / "sd15.safetensors").write_bytes(b"weights")
    assert find_model_file("sd15.safetensors", roots) == webui / "models" / "Stable-diffusion" / "sd15.safetensors"
    assert Path("/elsewhere") not in roots  # custom nodes are not model folders


def test_a_bad_file_is_left_out_with_a_warning_and_the_others_still_count(tmp_path: Path, caplog):
    broken, not_a_mapping, bad_section, good = (tmp_path / f"{n}.yaml" for n in ("broken", "list", "section", "ok"))
    broken.write_text("volume:\n  base_path: [unclosed\n")
    not_a_mapping.write_text("- /data\n")
    bad_section.write_text("fine:\n  base_path: /data/first\nbad: just a string\n")
    good.write_text("volume:\n  base_path: /data/good\n")
    with caplog.at_level(logging.WARNING, logger="comfy_worker.vram"):
        roots = model_roots(COMFYUI, [broken, not_a_mapping, bad_section, tmp_path / "absent.yaml", good])
    assert roots == [COMFYUI / "models", Path("/data/good")]  # nothing of a bad file, not even its good section
    warned = " ".join(record.getMessage() for record in caplog.records)
    for path in (broken, not_a_mapping, bad_section, tmp_path / "absent.yaml"):
        assert str(path) in warned
    assert "not a mapping" in warned


def test_the_model_cache_paths_file_survives_an_awkward_cache_folder(tmp_path: Path):
    root = tmp_path / "cache: it's #1"
    cache = ModelCache(root, 1 << 20, 1 << 20, timeout_s=1, url_guard=UrlGuard())
    written = cache.write_extra_model_paths(tmp_path / "paths.yaml")
    section = yaml.safe_load(written.read_text())["comfy_worker_model_cache"]
    assert section["base_path"] == str(root.resolve() / "models")
    assert section["loras"] == "loras"
    assert model_roots(COMFYUI, [written]) == [COMFYUI / "models", root.resolve() / "models"]


def test_the_custom_nodes_file_survives_awkward_folders(tmp_path: Path):
    folders = tuple(tmp_path / name for name in AWKWARD)
    settings = dataclasses.replace(load_settings({}), work_dir=tmp_path / "work", custom_nodes_dirs=folders)
    listed = yaml.safe_load(write_custom_nodes_config(settings).read_text())["comfy_worker"]["custom_nodes"]
    assert listed.splitlines()[1:] == [str(folder.resolve()) for folder in folders]


@pytest.mark.comfyui
def test_comfyui_reads_the_files_the_worker_writes_as_written(comfyui_dir: Path, tmp_path: Path):
    root = tmp_path / "cache: it's #1"
    cache = ModelCache(root, 1 << 20, 1 << 20, timeout_s=1, url_guard=UrlGuard())
    nodes = tmp_path / "nodes: \"x\" #2"
    settings = dataclasses.replace(load_settings({}), work_dir=tmp_path / "work", custom_nodes_dirs=(nodes,))
    files = [cache.write_extra_model_paths(tmp_path / "paths.yaml"), write_custom_nodes_config(settings)]
    script = ("import json, sys, folder_paths; from utils.extra_config import load_extra_path_config\n"
              "for f in sys.argv[1:]: load_extra_path_config(f)\n"
              "print(json.dumps({k: folder_paths.folder_names_and_paths[k][0] for k in ('loras', 'custom_nodes')}))")
    listing = subprocess.run([sys.executable, "-c", script, *map(str, files)], cwd=comfyui_dir,
                             capture_output=True, text=True, check=True)
    seen = json.loads(listing.stdout.strip().splitlines()[-1])
    assert str(root.resolve() / "models" / "loras") in seen["loras"]
    assert str(nodes.resolve()) in seen["custom_nodes"]


def test_hf_urls_become_the_resolve_urls_huggingface_hub_builds_with_the_token():
    hf_hub_url = pytest.importorskip("huggingface_hub").hf_hub_url  # installed with ComfyUI's requirements
    for url, repo, file, revision in [
        ("hf://owner/repo@v1.0/sub dir/model.safetensors", "owner/repo", "sub dir/model.safetensors", "v1.0"),
        ("hf://owner/repo@refs%2Fpr%2F1/model.safetensors", "owner/repo", "model.safetensors", "refs/pr/1"),
        ("hf://o/r/a%20b/m%2B1.safetensors", "o/r", "a b/m+1.safetensors", None),
    ]:
        got, headers = http_request(ModelRef(url, "loras", "m.safetensors"), Credentials(None, "hf_secret"))
        assert got == hf_hub_url(repo, file, revision=revision)
        assert headers == {"Authorization": "Bearer hf_secret"}
    own = ModelRef("hf://owner/repo/model.safetensors", "loras", "m.safetensors", headers={"Authorization": "Bearer x"})
    assert http_request(own, Credentials(None, "hf_secret"))[1] == {"Authorization": "Bearer x"}
    assert http_request(ModelRef("hf://o/r/m.safetensors", "loras", "m.safetensors"), Credentials(None, ""))[1] == {}
