"""Multi-GPU ComfyUI worker for RunPod serverless.

A job enters at `handler.py` → `worker.Worker.handle`, waits for an instance in `scheduler`, runs through
`comfy_client` and `follower` on one ComfyUI of the `fleet`, and leaves through `outputs` and `delivery`.
"""
