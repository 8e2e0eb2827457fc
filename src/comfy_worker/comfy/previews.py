"""Latent previews: the binary websocket frames ComfyUI sends while a sampler runs, decoded, and shrunk to a small
JPEG. ComfyUI v0.29 sends them to the prompt's client when the prompt's `extra_data.preview_method` (or the
`--preview-method` switch) names a method (server.py `send_image`, `send_image_with_metadata`):

    PREVIEW_IMAGE (1):                 >I event, >I image type (1 JPEG, 2 PNG), the image
    PREVIEW_IMAGE_WITH_METADATA (4):   >I event, >I metadata length, metadata JSON (node_id, prompt_id,
                                       image_type), the image
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass, field
from typing import Any

PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
IMAGE_TYPES = {1: "image/jpeg", 2: "image/png"}
PREVIEW_METHODS = ("latent2rgb", "taesd", "auto")  # ComfyUI's LatentPreviewMethod values that draw a preview
MAX_SIDE = 256
JPEG_QUALITY = 80


@dataclass(frozen=True)
class PreviewFrame:
    image: bytes
    content_type: str
    metadata: dict[str, Any] = field(default_factory=dict)  # node_id and prompt_id, in the metadata format


def decode_frame(frame: bytes) -> PreviewFrame | None:
    """The preview in one binary websocket frame; None for any other binary event or a frame too short to hold one."""
    if len(frame) < 8:
        return None
    event, second = struct.unpack(">II", frame[:8])
    if event == PREVIEW_IMAGE:
        content_type = IMAGE_TYPES.get(second)
        return PreviewFrame(frame[8:], content_type) if content_type and len(frame) > 8 else None
    if event == PREVIEW_IMAGE_WITH_METADATA:
        end = 8 + second
        if end >= len(frame):
            return None
        try:
            metadata = json.loads(frame[8:end])
        except ValueError:
            return None
        if not isinstance(metadata, dict):
            return None
        return PreviewFrame(frame[end:], str(metadata.get("image_type") or "image/jpeg"), metadata)
    return None


def shrink_to_jpeg(image: bytes, max_side: int = MAX_SIDE, quality: int = JPEG_QUALITY) -> tuple[bytes, int, int]:
    """The image as a JPEG no larger than `max_side` on either side: (bytes, width, height). Raises OSError or
    ValueError for data that is not an image."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(image)) as opened:
        picture = ImageOps.contain(opened.convert("RGB"), (max_side, max_side)) if max(opened.size) > max_side \
            else opened.convert("RGB")
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=quality)
    return out.getvalue(), picture.width, picture.height
