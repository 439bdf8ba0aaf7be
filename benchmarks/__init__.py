"""Benchmark harness and report writers (installed as passion_deploy.benchmarks); measured runs live in results/."""
