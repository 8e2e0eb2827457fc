"""One module per benchmark plan; bench/bench.py picks one with --plan."""
