"""DVC stage `data`: `audit.stages.data.main` (reads params.yaml, writes the outs dvc.yaml lists)."""

from audit.stages.data import main

if __name__ == "__main__":
    main()
