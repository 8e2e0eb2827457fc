"""The typed `outputs` list, shaped like Comfy's API v2: one entry per file or text, whatever key it also appears
under (`images`, `gifs`, `videos`, `audio`, `3d`, `text`), with its media facts where the file states them."""

from __future__ import annotations

import io
import logging
from typing import Any

from comfy_worker.delivery.outputs import OutputData, OutputFile, OutputText, data_size

log = logging.getLogger("comfy_worker.outputs")

MEDIA_TYPES = ("image", "video", "audio")


def media_type(content_type: str) -> str:
    """image, video or audio from the MIME type; anything else (3D models, archives, latents) is `file`."""
    major = content_type.split("/", 1)[0]
    return major if major in MEDIA_TYPES else "file"


def describe_file(output: OutputFile, data: OutputData) -> dict[str, Any]:
    """What a file is: node, type, content type, size, name, the compatible key, and its media facts."""
    kind = media_type(output.content_type)
    entry: dict[str, Any] = {
        "node_id": output.node_id,
        "type": kind,
        "content_type": output.content_type,
        "size_bytes": data_size(data),
        "filename": output.filename,
        "key": output.kind,
    }
    if output.subfolder and output.name != output.filename:
        entry["subfolder"] = output.name.rsplit("/", 1)[0]
    if output.animated:
        entry["animated"] = True
    if kind in ("video", "audio"):
        entry.update(media_facts(data))
    return entry


def file_entry(output: OutputFile, data: OutputData, delivered: dict[str, Any], index: int, with_data: bool
               ) -> dict[str, Any]:
    """The typed entry of a file delivered as `delivered` (its item under `output.kind`, at `index`). Without
    `with_data`, base64 content is left to the compatible entry, which `key` and `index` point to."""
    entry = {**describe_file(output, data), "index": index}
    if delivered.get("type") == "s3_url":
        entry["url"] = delivered["data"]
    elif with_data:
        entry["data"] = delivered["data"]
    return entry


def text_entry(text: OutputText, index: int) -> dict[str, Any]:
    data = text.text.encode()
    return {"node_id": text.node_id, "type": "text", "content_type": "text/plain; charset=utf-8",
            "size_bytes": len(data), "filename": None, "key": "text", "index": index, "data": text.text}


def media_facts(data: OutputData) -> dict[str, Any]:
    """Frame count, frame rate, duration, size and audio sample rate, as far as the container states them. PyAV
    (installed with ComfyUI) reads only the headers; an unreadable file has no facts, not an error."""
    try:
        import av
    except ImportError:
        return {}
    source = str(data) if not isinstance(data, bytes) else io.BytesIO(data)
    facts: dict[str, Any] = {}
    try:
        with av.open(source) as container:
            if container.duration:
                facts["duration_s"] = round(container.duration / 1_000_000, 3)
            if container.streams.video:
                video = container.streams.video[0]
                if video.frames:
                    facts["frames"] = video.frames
                if video.average_rate:
                    facts["fps"] = round(float(video.average_rate), 3)
                if video.width and video.height:
                    facts["width"], facts["height"] = video.width, video.height
            if container.streams.audio:
                audio = container.streams.audio[0]
                if audio.sample_rate:
                    facts["sample_rate"] = audio.sample_rate
                if audio.channels:
                    facts["channels"] = audio.channels
    except (av.error.FFmpegError, OSError, ValueError) as error:
        log.debug("no media facts: %s", error)
    return facts
