"""One module per stage kind; each a small function from a config and input paths to outputs.

prepare -> partition -> init (round 0) -> round t (t = 1..T) -> evaluate -> report
"""

from stages.evaluate import evaluate
from stages.init import init
from stages.partition import partition
from stages.prepare import prepare
from stages.report import report
from stages.round import round_stage

STAGES = ("prepare", "partition", "init", "round", "evaluate", "report")

__all__ = ["STAGES", "evaluate", "init", "partition", "prepare", "report", "round_stage"]
