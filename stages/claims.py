"""DVC stage `audit`: reads params.yaml, runs `audit.pipeline.run_audit`, writes its outs (see dvc.yaml)."""

from audit.pipeline import run_audit, stage_main

if __name__ == "__main__":
    stage_main(run_audit)
