"""Reading back what a benchmarked job returned: a video's frames, size and rate (PyAV), an image's size (Pillow),
and whether that is the output the workflow asked for, so that a broken output fails its job."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".gif")


def check_video(data: bytes, path: Path) -> dict[str, Any]:
    """Frames, size and rate of a returned video, read back with PyAV."""
    path.write_bytes(data)
    try:
        import av

        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frames = sum(1 for _ in container.decode(video=0))
            return {"bytes": len(data), "frames": frames, "width": stream.codec_context.width,
                    "height": stream.codec_context.height, "rate": str(stream.average_rate)}
    except Exception as error:
        return {"bytes": len(data), "error": repr(error)[:300]}


def check_output(data: bytes, filename: str, expected_frames: int | None, scratch: Path) -> dict[str, Any]:
    """A video's read-back (an error when it has no frame, or not the expected count), or an image's size (an
    error when Pillow cannot read it)."""
    if filename.lower().endswith(VIDEO_SUFFIXES):
        found = check_video(data, scratch / f"check{Path(filename).suffix}")
        frames = found.get("frames")
        if "error" not in found and not frames:
            found["error"] = "the video has no frame"
        elif "error" not in found and expected_frames and frames != expected_frames:
            found["error"] = f"{frames} frames, the workflow asked for {expected_frames}"
        return found
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return {"bytes": len(data), "width": image.width, "height": image.height}
    except Exception as error:
        return {"bytes": len(data), "error": repr(error)[:300]}


def expected_frames(workload: str, frames: int) -> int | None:
    """Frames a Wan video has for a requested length: its VAE packs 4 frames a latent after the first, so ComfyUI's
    latent of ((length - 1) // 4) + 1 decodes to 4 × that + 1. None for the image workloads."""
    if not workload.startswith("wan"):
        return None
    return 4 * ((frames - 1) // 4) + 1
