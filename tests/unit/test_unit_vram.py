"""The VRAM mode chosen per job from its own model files, the instance restart it calls for, and the slow-path
warnings read from ComfyUI v0.29's real log lines (tests/data/comfyui_logs, from the video benchmark's runs)."""

from __future__ import annotations

from pathlib import Path

from comfy_worker.fleet.slow_paths import JobModels, job_models, slow_path_warnings
from comfy_worker.fleet.tuning import LaunchTuning, vram_switch
from comfy_worker.fleet.vram import GIB, MODE_FLAGS, VramChoice, job_vram_choice, resident_bytes
from comfy_worker.models.files import ModelFile, find_model_file, workflow_model_files
from comfy_worker.settings import load_settings

LOGS = Path(__file__).parents[1] / "data" / "comfyui_logs"
CARD_24_MIB = 24 * 1024
H200_MIB = 143771
WAN14B = [ModelFile("wan14b.safetensors", Path("a"), 28_577_000_000, True, 28_577_000_000),
          ModelFile("umt5.safetensors", Path("b"), 6_731_000_000, False, 6_731_000_000),
          ModelFile("vae.safetensors", Path("c"), 254_000_000, False, 254_000_000)]
SDXL = [ModelFile("sdxl.safetensors", Path("a"), 5_135_000_000, True, 5_135_000_000),
        ModelFile("clip_g.safetensors", Path("b"), 1_390_000_000, False, 1_390_000_000),
        ModelFile("vae.safetensors", Path("c"), 167_000_000, False, 167_000_000)]


def lines(name: str) -> list[str]:
    return (LOGS / name).read_text().splitlines()


def sparse(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as file:
        file.truncate(size)
    return path


def test_a_jobs_model_files_are_found_in_every_models_folder_with_their_sizes(tmp_path: Path):
    unet = sparse(tmp_path / "volume" / "diffusion_models" / "wan" / "t2v.safetensors", 3000)
    sparse(tmp_path / "local" / "text_encoders" / "umt5.safetensors", 1000)
    workflow = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "wan/t2v.safetensors", "weight_dtype": "fp8_e4m3fn"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": "umt5.safetensors", "type": "wan"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": "missing.safetensors"}},
    }
    files = {f.name: f for f in workflow_model_files(workflow, [tmp_path / "local", tmp_path / "volume"])}
    assert set(files) == {"wan/t2v.safetensors", "umt5.safetensors"}  # a missing file is ComfyUI's to report
    assert files["wan/t2v.safetensors"].path == unet and files["wan/t2v.safetensors"].diffusion
    assert files["wan/t2v.safetensors"].resident_bytes == 1500  # 16-bit weights cast to fp8 on load
    assert not files["umt5.safetensors"].diffusion and files["umt5.safetensors"].resident_bytes == 1000
    assert find_model_file("../local/text_encoders/umt5.safetensors", [tmp_path / "volume"]) is None


def test_the_mode_follows_the_jobs_own_models_not_the_largest_file_on_disk():
    assert resident_bytes(WAN14B) == 28_577_000_000 + 6_731_000_000  # the VAE is moved off for the encoder
    assert job_vram_choice("auto", CARD_24_MIB << 20, SDXL).mode == "high"  # SDXL on a 24 GiB card: resident
    streamed = job_vram_choice("auto", CARD_24_MIB << 20, WAN14B)  # 14B: streamed from the file, not pinned RAM
    assert (streamed.mode, streamed.flags) == ("dynamic", ("--fast-disk",))
    assert job_vram_choice("dynamic", CARD_24_MIB << 20, WAN14B).flags == ()  # forced: ComfyUI's own pinned copy
    assert job_vram_choice("auto", H200_MIB << 20, WAN14B).mode == "high"
    assert job_vram_choice("normal", H200_MIB << 20, WAN14B).flags == ("--disable-dynamic-vram",)


def test_an_instance_is_restarted_only_when_its_mode_does_not_suit_the_job():
    settings = load_settings({})
    high = LaunchTuning(("--highvram", "--disable-cuda-malloc"), {"A": "1"}, None,
                        VramChoice("high", MODE_FLAGS["high"], "start"))
    switched = vram_switch(settings, high, CARD_24_MIB << 20, WAN14B)
    assert switched is not None and switched.vram.mode == "dynamic"
    assert switched.flags == ("--fast-disk", "--disable-cuda-malloc") and switched.env == {"A": "1"}
    assert vram_switch(settings, high, CARD_24_MIB << 20, SDXL) is None
    assert vram_switch(settings, switched, CARD_24_MIB << 20, SDXL).vram.mode == "high"  # and back
    assert vram_switch(settings, high, CARD_24_MIB << 20, []) is None  # no model files known: nothing to decide
    assert vram_switch(load_settings({"COMFY_VRAM_MODE": "high"}), high, CARD_24_MIB << 20, WAN14B) is None
    custom = LaunchTuning((), {}, None, VramChoice("custom", (), "COMFY_EXTRA_ARGS sets --lowvram"))
    assert vram_switch(settings, custom, CARD_24_MIB << 20, WAN14B) is None


def test_nothing_is_said_where_nothing_is_slow_on_real_logs():
    # --highvram on an H200: loaded completely
    assert slow_path_warnings(lines("h200_highvram_wan14b.log"), {}, H200_MIB, {}, 30000.0,
                              JobModels(fit=True, step_s=6.05)) == []
    # the worker's own choice on a 24 GiB card: streamed weights hidden behind a 6.08 s step (measured 6.05 resident)
    assert slow_path_warnings(lines("h200_24gib_dynamic_wan14b.log"), {}, CARD_24_MIB, {}, 30000.0,
                              JobModels(fit=False, step_s=6.08)) == []


def test_dynamic_loading_on_a_card_that_holds_the_models_is_reported_from_a_real_log():
    warnings = slow_path_warnings(lines("h200_vanilla_dynamic_wan14b.log"), {}, H200_MIB, {}, 30000.0,
                                  JobModels(fit=True, step_s=6.05))
    assert any(w.startswith("WAN21 ran with ComfyUI's dynamic VRAM loading (27249 MB staged) on a 140 GiB GPU")
               and "COMFY_VRAM_MODE=auto" in w for w in warnings)


def test_a_stream_that_will_not_hide_names_the_fp8_opt_in_with_its_projection():
    (warning,) = [w for w in slow_path_warnings(lines("h200_24gib_dynamic_wan14b.log"), {}, CARD_24_MIB, {},
                                                30000.0, JobModels(fit=False, step_s=0.3)) if "WAN21" in w]
    assert "about 14.4 GB of weights are copied every step, ≈0.6 s over PCIe Gen4 against a 0.30 s step" in warning
    assert "weight_dtype fp8_e4m3fn_fast" in warning and "about 0.3 s a step" in warning


def test_gguf_on_a_card_with_room_for_fp8_and_partial_loads_where_the_models_fit():
    gguf = JobModels(fit=True, gguf_bytes=(8 * GIB,))
    assert any("GGUF model of 8.0 GiB" in w for w in slow_path_warnings([], {}, H200_MIB, {}, None, gguf))
    assert slow_path_warnings([], {}, 12 * 1024, {}, None, JobModels(fit=False, gguf_bytes=(8 * GIB,))) == []
    partial = "loaded partially; 10240.00 MB usable, 9000.00 MB loaded, 3500.50 MB offloaded, 0.00 MB buffer reserved"
    assert any("loaded partially (9000 MB on the GPU, 3500 MB offloaded)" in w
               for w in slow_path_warnings([partial], {}, H200_MIB, {}, None, JobModels(fit=True)))
    assert any("loading models took 6.0 s of the job's 8.0 s" in w
               for w in slow_path_warnings([], {}, H200_MIB, {"model_load_ms": 6000.0}, 8000.0))


def test_job_models_take_the_slowest_sampler_and_the_gguf_files(tmp_path: Path):
    q5 = ModelFile("wan-q5.gguf", tmp_path, 10 * GIB, True, 10 * GIB)
    models = job_models([q5, *SDXL[1:]], H200_MIB, [2.0, None, 0.5])
    assert models.fit and models.gguf_bytes == (10 * GIB,) and models.step_s == 2.0
    assert job_models([], None, []) == JobModels()
