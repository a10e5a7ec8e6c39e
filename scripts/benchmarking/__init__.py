"""The parts of scripts/benchmark.py (its driver stays in that script) and the timing every script shares.

`timing` serves every script in scripts/; `protocol` is what the three framework workers share
(`bcjax_runner`, `keras_runner`, `torch_runner`), `workers` runs them in subprocesses, `figures`
and `tables` turn their rows into the report, and `record` says where they ran and saves the JSON.
The scripts run with scripts/ as `sys.path[0]`, so this package imports as `benchmarking`.
"""
