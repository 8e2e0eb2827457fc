"""The typed `outputs` list on real ComfyUI: one entry per image, video, audio and text, next to the compatible
keys, with sizes and content types from the files and the video's frames, rate and duration from its container."""

from __future__ import annotations

import base64
import io
import math
import struct
import wave

import pytest
from conftest import make_job
from workflows import invert

from comfy_worker.delivery.typed_outputs import media_type

pytestmark = pytest.mark.comfyui

TYPED_KEYS = {"node_id", "type", "content_type", "size_bytes", "filename", "key", "index"}


def five_frames() -> dict:
    colors = (0xFF0000, 0x00FF00, 0x0000FF, 0xFFFF00, 0x00FFFF)
    workflow = {str(i + 1): {"class_type": "EmptyImage",
                             "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": color}}
                for i, color in enumerate(colors)}
    previous = "1"
    for i in range(2, len(colors) + 1):
        workflow[f"b{i}"] = {"class_type": "ImageBatch", "inputs": {"image1": [previous, 0], "image2": [str(i), 0]}}
        previous = f"b{i}"
    return workflow, previous


def tone_wav() -> str:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(i / 10))) for i in range(8000)))
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize(("content_type", "kind"), [
    ("image/png", "image"), ("image/gif", "image"), ("video/mp4", "video"), ("video/webm", "video"),
    ("audio/flac", "audio"), ("model/gltf-binary", "file"), ("application/octet-stream", "file"),
])
def test_media_type_follows_the_mime_type(content_type, kind):
    assert media_type(content_type) == kind


def test_an_image_has_a_typed_entry_beside_images(worker, run):
    result = run(worker.handle(make_job(invert(prefix="sub/pic"))))
    assert "error" not in result, result
    [image] = result["images"]
    [typed] = result["outputs"]
    assert typed.keys() >= TYPED_KEYS
    assert typed["type"] == "image" and typed["content_type"] == "image/png" and typed["node_id"] == "3"
    assert (typed["key"], typed["index"], typed["filename"], typed["subfolder"]) == \
        ("images", 0, image["filename"], "sub")
    assert typed["data"] == image["data"] and typed["size_bytes"] == len(base64.b64decode(image["data"]))


def test_a_video_entry_states_frames_fps_and_duration(worker, run):
    workflow, frames = five_frames()
    workflow["v"] = {"class_type": "CreateVideo", "inputs": {"images": [frames, 0], "fps": 10.0}}
    workflow["s"] = {"class_type": "SaveVideo", "inputs": {"video": ["v", 0], "filename_prefix": "video/clip",
                                                          "format": "mp4", "codec": "h264"}}
    result = run(worker.handle(make_job(workflow)))
    assert "error" not in result, result
    [video] = result["videos"]
    [typed] = result["outputs"]
    assert typed["type"] == "video" and typed["content_type"] == "video/mp4" and typed["key"] == "videos"
    assert typed["frames"] == 5 and typed["fps"] == 10.0 and typed["duration_s"] == pytest.approx(0.5, abs=0.05)
    assert (typed["width"], typed["height"]) == (32, 32)
    assert typed["size_bytes"] == len(base64.b64decode(video["data"])) > 0


def test_an_audio_entry_states_its_duration_and_sample_rate(worker, run):
    workflow = {
        "1": {"class_type": "LoadAudio", "inputs": {"audio": "tone.wav"}},
        "2": {"class_type": "SaveAudio", "inputs": {"audio": ["1", 0], "filename_prefix": "audio/tone"}},
    }
    result = run(worker.handle(make_job(workflow, images=[{"name": "tone.wav", "image": tone_wav()}])))
    assert "error" not in result, result
    [typed] = result["outputs"]
    assert typed["type"] == "audio" and typed["content_type"] == "audio/flac" and typed["key"] == "audio"
    assert typed["duration_s"] == pytest.approx(1.0, abs=0.05) and typed["channels"] == 1
    assert typed["sample_rate"] > 0
    assert base64.b64decode(typed["data"])[:4] == b"fLaC"


def test_text_and_an_image_of_one_job_are_both_typed(worker, run):
    workflow = {
        **invert(),
        "t1": {"class_type": "StringConcatenate", "inputs": {"string_a": "héllo ", "string_b": "world",
                                                              "delimiter": ""}},
        "t2": {"class_type": "PreviewAny", "inputs": {"source": ["t1", 0]}},
    }
    result = run(worker.handle(make_job(workflow)))
    assert "error" not in result, result
    assert result["text"] == [{"node_id": "t2", "type": "text", "data": "héllo world"}]  # the compatible key, as is
    by_type = {entry["type"]: entry for entry in result["outputs"]}
    assert set(by_type) == {"image", "text"}
    assert by_type["text"] == {"node_id": "t2", "type": "text", "content_type": "text/plain; charset=utf-8",
                               "size_bytes": len("héllo world".encode()), "filename": None, "key": "text",
                               "index": 0, "data": "héllo world"}
