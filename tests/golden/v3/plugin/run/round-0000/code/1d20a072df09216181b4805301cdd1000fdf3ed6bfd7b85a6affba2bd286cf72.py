"""goldplug: a user's own FL algorithm in a package of its own (the golden plugin run).

It is not part of blazefl: `tests/golden/make_golden.py` runs it by import path
(`fl.algorithm=goldplug.algo:GoldAvg`) from the folder above this one, so the run records
`goldplug/__init__.py`, `goldplug/algo.py` and `goldplug/common.py` as its user code and
carries copies of them in `round-0000/code/`. Do not edit these files: the golden run's
recorded hashes name them (regenerate the run after any change).
"""
