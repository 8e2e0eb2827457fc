"""Which model files a workflow uses, so a job can go to an instance that already holds them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft", ".gguf", ".onnx")


def models_in(workflow: Mapping[str, Any]) -> frozenset[str]:
    """The file names given to loader inputs (ckpt_name, unet_name, lora_name, …): any string input naming a model
    file."""
    found = set()
    for node in workflow.values():
        inputs = node.get("inputs", {}) if isinstance(node, Mapping) else {}
        if not isinstance(inputs, Mapping):
            continue
        for value in inputs.values():
            if isinstance(value, str) and value.lower().endswith(MODEL_SUFFIXES):
                found.add(value)
    return frozenset(found)
