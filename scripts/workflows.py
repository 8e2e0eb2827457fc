"""Model-free API-format workflows the tests send."""

from __future__ import annotations

from typing import Any


def invert(color: int = 0x102030, size: int = 32, prefix: str = "inverted") -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1, "color": color}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def load_invert(name: str) -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "loaded"}},
    }


def through(node_class: str, size: int = 16, **inputs: Any) -> dict[str, Any]:
    """EmptyImage → <node_class>(image, **inputs) → SaveImage."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1, "color": 0}},
        "2": {"class_type": node_class, "inputs": {"image": ["1", 0], **inputs}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "through"}},
    }


def sleep(seconds: float) -> dict[str, Any]:
    return through("WorkerTestSleep", seconds=seconds)
