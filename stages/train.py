"""DVC stage `train`: `audit.stages.train.main` (reads params.yaml, writes the outs dvc.yaml lists)."""

import sys
from pathlib import Path

# This checkout's code first, not whichever copy the environment has installed: a DVC experiment
# runs the stage in a copy of the project (.dvc/tmp/exps/...), and must run that copy's code.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit.stages.train import main

if __name__ == "__main__":
    main()
