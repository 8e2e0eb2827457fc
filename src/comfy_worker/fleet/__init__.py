"""Where a job waits and runs: one ComfyUI per GPU, started, watched and tuned; the scheduler's queues; recovery."""
