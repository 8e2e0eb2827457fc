"""One job's path: its context, the runner that walks it step by step, and the part that runs on an instance."""
