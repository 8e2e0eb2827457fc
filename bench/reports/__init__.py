"""The pieces of bench/report.py: constants, the scaling run, tables, plots."""
