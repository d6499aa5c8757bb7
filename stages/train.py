"""DVC stage `train`: `audit.stages.train.main` (reads params.yaml, writes the outs dvc.yaml lists)."""

from audit.stages.train import main

if __name__ == "__main__":
    main()
