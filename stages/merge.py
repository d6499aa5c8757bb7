"""DVC stage `merge`: reads params.yaml, runs `audit.pipeline.run_merge`, writes its outs (see dvc.yaml)."""

from audit.pipeline import run_merge, stage_main

if __name__ == "__main__":
    stage_main(run_merge)
