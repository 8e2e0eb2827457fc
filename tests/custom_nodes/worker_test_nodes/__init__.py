"""Nodes the tests load into the real ComfyUI instances: slow steps with progress, previews, a dropped websocket, a
VideoHelperSuite-style `gifs` output, a failure on demand, a crash and a stand-in for a paid API node. Not shipped in
the image."""

import asyncio
import os
import signal
import time
import uuid

import comfy.model_management
import comfy.utils
import folder_paths
import numpy as np
import torch
from PIL import Image
from server import PromptServer

CATEGORY = "worker_tests"


class AlwaysRunImageNode:
    """An IMAGE → IMAGE node that ComfyUI never serves from its cache: every job really runs it."""

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = CATEGORY

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return uuid.uuid4().hex  # a fresh value; math.nan would equal itself inside ComfyUI's cache key


class WorkerTestSleep(AlwaysRunImageNode):
    """Passes the image through after `seconds`, reporting steps and honouring interrupts."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "seconds": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 600.0})}}

    def run(self, image, seconds):
        steps = max(1, int(seconds / 0.05))
        bar = comfy.utils.ProgressBar(steps)
        for _ in range(steps):
            comfy.model_management.throw_exception_if_processing_interrupted()
            time.sleep(seconds / steps)
            bar.update(1)
        return (image,)


class WorkerTestPreview(AlwaysRunImageNode):
    """Reports `steps` steps over `seconds`, each with the image as its preview, through ComfyUI's own progress bar:
    ComfyUI encodes and sends the frames as it does a sampler's latent previews (no core node previews without a
    model, and the test instances have none)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "steps": ("INT", {"default": 8, "min": 1, "max": 1000}),
                             "seconds": ("FLOAT", {"default": 2.0, "min": 0.0, "max": 600.0})}}

    def run(self, image, steps, seconds):
        picture = Image.fromarray(np.clip(image[0].cpu().numpy() * 255, 0, 255).astype(np.uint8))
        bar = comfy.utils.ProgressBar(steps)
        for step in range(steps):
            comfy.model_management.throw_exception_if_processing_interrupted()
            time.sleep(seconds / steps)
            bar.update_absolute(step + 1, steps, ("JPEG", picture, 512))
        return (image,)


class WorkerTestDropWebsockets(AlwaysRunImageNode):
    """Closes every websocket the server holds, as a network drop would, then carries on."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    def run(self, image):
        server = PromptServer.instance
        for ws in list(server.sockets.values()):
            asyncio.run_coroutine_threadsafe(ws.close(), server.loop).result(5)
        time.sleep(0.5)
        return (image,)


class WorkerTestSaveGif:
    """Saves the batch as an animated GIF and reports it under `gifs`, the way VideoHelperSuite does."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "gif"})}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"
    CATEGORY = CATEGORY

    def run(self, images, filename_prefix):
        output_dir = folder_paths.get_output_directory()
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, output_dir, images.shape[2], images.shape[1]
        )
        frames = [Image.fromarray(np.clip(255.0 * i.cpu().numpy(), 0, 255).astype(np.uint8)) for i in images]
        filename = f"{name}_{counter:05}.gif"
        fullpath = os.path.join(folder, filename)
        frames[0].save(fullpath, save_all=True, append_images=frames[1:], duration=125, loop=0)
        gif = {"filename": filename, "subfolder": subfolder, "type": "output", "format": "image/gif",
               "frame_rate": 8.0, "fullpath": fullpath}
        return {"ui": {"gifs": [gif]}}


class WorkerTestRaise(AlwaysRunImageNode):
    """Fails on purpose: a plain error, or a CUDA-style out-of-memory error."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "message": ("STRING", {"default": "boom"}),
                             "out_of_memory": ("BOOLEAN", {"default": False})},
                "optional": {"once_marker": ("STRING", {"default": ""})}}

    def run(self, image, message, out_of_memory, once_marker=""):
        if not first_time(once_marker):
            return (image,)
        if out_of_memory:
            raise torch.OutOfMemoryError(f"CUDA out of memory. {message}")
        raise ValueError(message)


class WorkerTestCrash(AlwaysRunImageNode):
    """Kills its own ComfyUI process (SIGKILL) after `seconds`, as a driver fault or the OOM killer would."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "seconds": ("FLOAT", {"default": 0.5})},
                "optional": {"once_marker": ("STRING", {"default": ""})}}

    def run(self, image, seconds, once_marker=""):
        if not first_time(once_marker):
            return (image,)
        time.sleep(seconds)
        os.kill(os.getpid(), signal.SIGKILL)
        return (image,)


class WorkerTestHang(AlwaysRunImageNode):
    """Freezes its own ComfyUI process (SIGSTOP): it stops answering without exiting, as a deadlock would."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    def run(self, image):
        time.sleep(1.0)  # lets the server answer POST /prompt first: the hang comes mid-job, not mid-request
        os.kill(os.getpid(), signal.SIGSTOP)
        return (image,)


class WorkerTestAllocate(AlwaysRunImageNode):
    """Allocates `gib` GiB on the instance's torch device and lets it go: more than the card has is a real CUDA
    out-of-memory error."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "gib": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 4096.0})}}

    def run(self, image, gib):
        block = torch.empty(int(gib * 2**30), dtype=torch.uint8, device=comfy.model_management.get_torch_device())
        del block
        return (image,)


class WorkerTestLoraDigest:
    """Reads a file of the loras folder like a loader would and returns its sha256 as a STRING (PreviewAny shows
    it): a model file found, read and checked, without a real model."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"lora_name": (folder_paths.get_filename_list("loras"),)}}

    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    CATEGORY = CATEGORY

    def run(self, lora_name):
        import hashlib

        with open(folder_paths.get_full_path_or_raise("loras", lora_name), "rb") as file:
            return (hashlib.sha256(file.read()).hexdigest(),)


class WorkerTestPaidCall(AlwaysRunImageNode):
    """Stands for one of ComfyUI's API nodes (a paid call to an outside service): marked `API_NODE` as they are,
    which /object_info reports as `api_node: true`. Appends a line to `ledger` each time it runs, so a test can
    count the calls that would have been paid."""

    API_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "ledger": ("STRING", {"default": ""})}}

    def run(self, image, ledger):
        if ledger:
            with open(ledger, "a") as file:
                file.write("paid\n")
        return (image,)


def first_time(marker: str) -> bool:
    """False when `marker` names a file that exists; else creates it (when named) and returns True. Lets a fault
    happen on the first run only, wherever the job runs next."""
    if not marker:
        return True
    try:
        with open(marker, "x"):
            return True
    except FileExistsError:
        return False


NODE_CLASS_MAPPINGS = {
    "WorkerTestSleep": WorkerTestSleep,
    "WorkerTestPreview": WorkerTestPreview,
    "WorkerTestDropWebsockets": WorkerTestDropWebsockets,
    "WorkerTestSaveGif": WorkerTestSaveGif,
    "WorkerTestRaise": WorkerTestRaise,
    "WorkerTestCrash": WorkerTestCrash,
    "WorkerTestHang": WorkerTestHang,
    "WorkerTestAllocate": WorkerTestAllocate,
    "WorkerTestLoraDigest": WorkerTestLoraDigest,
    "WorkerTestPaidCall": WorkerTestPaidCall,
}
