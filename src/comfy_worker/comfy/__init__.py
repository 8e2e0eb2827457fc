"""Talking to one ComfyUI: its HTTP API, following a prompt to its end, the per-job rewrite of a workflow."""
