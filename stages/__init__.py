"""One module per stage kind; each a small function from a config and input paths to outputs.

prepare -> partition -> init (round 0) -> round t (t = 1..T) -> evaluate -> report
"""

from blazefl.stages.evaluate import evaluate
from blazefl.stages.init import init
from blazefl.stages.partition import partition
from blazefl.stages.prepare import prepare
from blazefl.stages.report import report
from blazefl.stages.round import round_stage

__all__ = ["evaluate", "init", "partition", "prepare", "report", "round_stage"]
