"""The tuning node's safetensors reader (fast_load.py), on the CPU: every tensor as safetensors itself reads it."""

from __future__ import annotations

import importlib.util
import json
import sys
import weakref
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

NODE = Path(__file__).resolve().parents[2] / "src" / "comfyui_nodes" / "comfy_worker_tuning" / "fast_load.py"
spec = importlib.util.spec_from_file_location("fast_load_under_test", NODE)
fast_load = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = fast_load  # dataclasses look their module up while the class is made
spec.loader.exec_module(fast_load)


def tensors_of_every_kind() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return {
        "big.f16": torch.randn(97, 131, generator=generator).half(),  # spans several 1000-byte pieces
        "b.bf16": torch.randn(33, generator=generator).bfloat16(),
        "odd.f32": torch.randn(3, 5, 7, generator=generator),
        "scalar.f32": torch.tensor(2.5),
        "empty.f16": torch.empty(0, 4, dtype=torch.float16),
        "ids.i64": torch.arange(11),
        "mask.bool": torch.tensor([True, False, True]),
        "fp8.e4m3": torch.randn(17, 9, generator=generator).to(torch.float8_e4m3fn),
        "u8": torch.arange(255, dtype=torch.uint8),
    }


def write_raw(path: Path, header: dict, data_bytes: int) -> None:
    """A file with this safetensors header, written as is, and that many zero bytes of data."""
    encoded = json.dumps(header).encode()
    path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + b"\0" * data_bytes)


@pytest.mark.parametrize("threads", [1, 3])
def test_every_tensor_reads_back_as_safetensors_reads_it(tmp_path, threads):
    path = tmp_path / "model.safetensors"
    save_file(tensors_of_every_kind(), str(path), metadata={"format": "pt", "note": "x"})
    loaded, metadata = fast_load.read_to_device(str(path), torch.device("cpu"), threads, chunk=1000)
    expected = load_file(str(path))
    assert metadata == {"format": "pt", "note": "x"}
    assert loaded.keys() == expected.keys()
    for name, tensor in expected.items():
        got = loaded[name]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape, name
        assert torch.equal(got.view(-1).view(torch.uint8), tensor.view(-1).view(torch.uint8)), name


def test_the_pieces_cover_every_byte_of_every_tensor_once(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(tensors_of_every_kind(), str(path))
    entries, _ = fast_load.read_header(str(path))
    pieces = fast_load.plan_pieces(entries, chunk=1000)
    assert all(0 < piece.length <= 1000 for piece in pieces)
    covered: dict[str, int] = {}
    for piece in pieces:
        assert sum(length for *_, length in piece.parts) == piece.length
        for name, _at, into, length in piece.parts:
            assert into == covered.get(name, 0)  # each tensor's bytes in order, no gap, no overlap
            covered[name] = into + length
    assert covered == {e.name: e.end - e.start for e in entries if e.end > e.start}


@pytest.mark.parametrize("content, why", [
    (b"\x01", "shorter than a safetensors header"),
    ((10**9).to_bytes(8, "little") + b"{}", "header of"),
    (len(b"[1]").to_bytes(8, "little") + b"[1]", "not a JSON object"),
])
def test_a_file_that_is_not_safetensors_is_refused_with_the_reason(tmp_path, content, why):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(fast_load.NotLoadable, match=why):
        fast_load.read_to_device(str(path), torch.device("cpu"), 2)


def test_offsets_that_do_not_fit_the_shape_or_the_file_are_refused(tmp_path):
    path = tmp_path / "lying.safetensors"
    write_raw(path, {"w": {"dtype": "F16", "shape": [4], "data_offsets": [0, 6]}}, 8)
    with pytest.raises(fast_load.NotLoadable, match="do not fit"):
        fast_load.read_header(str(path))
    write_raw(path, {"w": {"dtype": "F16", "shape": [4], "data_offsets": [0, 8]}}, 4)  # the file ends early
    with pytest.raises(fast_load.NotLoadable, match="do not fit"):
        fast_load.read_header(str(path))


def test_a_dtype_the_reader_does_not_know_is_left_to_comfyui(tmp_path):
    path = tmp_path / "complex.safetensors"
    write_raw(path, {"w": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, 8)
    with pytest.raises(fast_load.NotLoadable, match="C64"):
        fast_load.read_header(str(path))


def test_weights_are_taken_as_read_where_shapes_match_and_converted_to_the_models_dtype():
    module = torch.nn.Linear(3, 2)
    sd = {"weight": torch.ones(2, 3).half(), "bias": torch.ones(2), "not.the.models": torch.ones(1).half()}
    assert fast_load.as_the_models_weights(module, sd) == 1  # the weight: float16 → the model's float32
    assert sd["weight"].dtype == torch.float32 and torch.equal(sd["weight"], torch.ones(2, 3))
    assert sd["not.the.models"].dtype == torch.float16  # not the model's: left for loading to ignore
    sd = {"bias": torch.zeros(2).half(), "weight": torch.zeros(3, 2)}
    assert fast_load.as_the_models_weights(module, sd) is None  # a shape that is not the weight's
    assert sd["bias"].dtype == torch.float16  # nothing changed: ComfyUI's copy path loads it


def test_quantized_layouts_and_malformed_entries_are_left_to_comfyui(tmp_path):
    path = tmp_path / "quant.safetensors"
    save_file({"layer.weight": torch.zeros(2, 2), "layer.comfy_quant": torch.zeros(3, dtype=torch.uint8)}, str(path))
    with pytest.raises(fast_load.NotLoadable, match="quantized layout"):
        fast_load.read_header(str(path))
    save_file({"layer.weight": torch.zeros(2, 2)}, str(path), metadata={"_quantization_metadata": "{}"})
    with pytest.raises(fast_load.NotLoadable, match="quantized layout"):
        fast_load.read_header(str(path))
    write_raw(path, {"w": {"dtype": "F16", "data_offsets": [0, 2]}}, 2)  # no shape
    with pytest.raises(fast_load.NotLoadable, match="KeyError"):
        fast_load.read_header(str(path))


def test_a_failed_read_raises_and_holds_no_tensor(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    save_file(tensors_of_every_kind(), str(path))
    made: list = []
    real_empty = torch.empty

    def tracked_empty(*args, **kwargs):
        tensor = real_empty(*args, **kwargs)
        if kwargs.get("device") is not None:  # the destination tensors, not the read buffers
            made.append(weakref.ref(tensor))
        return tensor

    reads = iter(range(1000))

    def failing_read(fd, view, offset):
        if next(reads) == 3:
            raise OSError("the disk went away")
        return real_read(fd, view, offset)

    real_read = fast_load._read_fully
    monkeypatch.setattr(fast_load.torch, "empty", tracked_empty)
    monkeypatch.setattr(fast_load, "_read_fully", failing_read)
    with pytest.raises(OSError, match="the disk went away") as caught:
        fast_load.read_to_device(str(path), torch.device("cpu"), 2, chunk=1000)
    assert made and caught.value.__traceback__ is not None  # the traceback is still held here...
    assert all(ref() is None for ref in made)  # ...yet no destination tensor is kept alive by it


def test_a_model_that_fails_to_build_goes_to_comfyuis_loader(tmp_path, caplog):
    path = tmp_path / "model.safetensors"
    save_file({"weight": torch.ones(2, 3)}, str(path))
    calls = []

    def comfyui_loader(unet_path, model_options=None, disable_dynamic=False):
        calls.append(("comfyui", unet_path, model_options))
        return "comfyui's patcher"

    def failing_build(sd, model_options, metadata, disable_dynamic):
        calls.append(("build", sorted(sd), model_options["offload_device"]))
        raise torch.OutOfMemoryError("CUDA out of memory")

    load = fast_load.wrap_load_diffusion_model(comfyui_loader, failing_build, lambda: torch.device("cpu"),
                                               lambda: True, lambda: torch.device("cpu"))
    settings = fast_load.SETTINGS
    saved = (settings.threads, settings.force)
    try:
        settings.threads, settings.force = 2, True
        with caplog.at_level("WARNING", logger="comfy_worker_tuning.fast_load"):
            assert load(str(path), {"dtype": None}) == "comfyui's patcher"
        assert load(str(path), {"offload_device": torch.device("cpu")}) == "comfyui's patcher"  # its own devices
    finally:
        settings.threads, settings.force = saved
    assert calls[0] == ("build", ["weight"], torch.device("cpu"))
    assert calls[1] == ("comfyui", str(path), {"dtype": None})  # the caller's options, unchanged
    assert calls[2][0] == "comfyui" and len(calls) == 3  # no fast attempt for a loader with its own devices
    assert "fast load of model.safetensors failed (building the model: OutOfMemoryError" in caplog.text


def test_a_load_is_not_eligible_when_off_not_safetensors_or_not_a_high_vram_gpu(tmp_path):
    settings = fast_load.SETTINGS
    saved = (settings.threads, settings.force)
    try:
        settings.threads, settings.force = 0, False
        assert fast_load.eligible("m.safetensors", {}, torch.device("cpu"), True) == "off"
        settings.threads = 4
        assert fast_load.eligible("m.ckpt", {}, torch.device("cpu"), True) == "not a safetensors file"
        assert "high-VRAM" in fast_load.eligible("m.safetensors", {}, torch.device("cpu"), True)
        settings.force = True
        assert fast_load.eligible("m.safetensors", {}, torch.device("cpu"), False) is None
    finally:
        settings.threads, settings.force = saved
