"""DVC stage `evaluate`: reads params.yaml, runs `audit.pipeline.run_evaluate`, writes its outs (see dvc.yaml)."""

from audit.pipeline import run_evaluate, stage_main

if __name__ == "__main__":
    stage_main(run_evaluate)
