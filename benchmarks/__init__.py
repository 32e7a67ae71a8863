"""Performance benchmark of blazefl against a plain-PyTorch compute floor (not part of the tests).

Run ``python -m benchmarks.run --help``; see benchmarks/README.md.
"""
