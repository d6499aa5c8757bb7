"""DVC stage `train`: reads params.yaml, runs `audit.pipeline.run_train`, writes its outs (see dvc.yaml)."""

from audit.pipeline import run_train, stage_main

if __name__ == "__main__":
    stage_main(run_train)
