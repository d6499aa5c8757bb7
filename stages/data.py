"""DVC stage `data`: reads params.yaml, runs `audit.pipeline.run_data`, writes its outs (see dvc.yaml)."""

from audit.pipeline import run_data, stage_main

if __name__ == "__main__":
    stage_main(run_data)
