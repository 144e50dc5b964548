"""mtl's performance benchmarks: ``python benchmarks/run.py --help`` (see benchmarks/README.md)."""
