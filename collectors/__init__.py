"""Collectors: what GPU clusters already expose (DCGM exporter / Prometheus, Slurm accounting, the Kubernetes
pod list) turned into `usage.gpu.v1` events.

Parsing and event building (`dcgm`, `slurm`, `k8s`, `common`) are plain logic with no I/O; `runner` does the
fetching, keeps each collector's cursor file and produces the events.
"""
