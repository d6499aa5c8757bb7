"""DVC stage `report`: reads params.yaml, runs `audit.pipeline.run_report`, writes reports/audit/ (see dvc.yaml)."""

from audit.pipeline import run_report, stage_main

if __name__ == "__main__":
    stage_main(run_report)
