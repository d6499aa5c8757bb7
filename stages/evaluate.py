"""DVC stage `evaluate`: `audit.stages.evaluate.main` (reads params.yaml, writes the outs dvc.yaml lists)."""

from audit.stages.evaluate import main

if __name__ == "__main__":
    main()
