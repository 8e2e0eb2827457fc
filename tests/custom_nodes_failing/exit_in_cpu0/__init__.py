"""A custom node that stops the ComfyUI instance named cpu0 while it imports, as a broken node or a bad flag would;
every other instance loads it as an empty node pack."""

import sys

if any(arg.replace("\\", "/").endswith("/cpu0/output") for arg in sys.argv):
    raise SystemExit("exit_in_cpu0: this test node refuses to load in cpu0")

NODE_CLASS_MAPPINGS = {}
