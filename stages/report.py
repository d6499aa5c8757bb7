"""DVC stage `report`: `audit.stages.report.main` (reads params.yaml, writes the outs dvc.yaml lists)."""

from audit.stages.report import main

if __name__ == "__main__":
    main()
