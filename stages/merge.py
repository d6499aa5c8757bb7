"""DVC stage `merge`: `audit.stages.merge.main` (reads params.yaml, writes the outs dvc.yaml lists)."""

from audit.stages.merge import main

if __name__ == "__main__":
    main()
