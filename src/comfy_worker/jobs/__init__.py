"""Where a job enters and walks: the request checked, its context, and the runner that takes it step by step."""
