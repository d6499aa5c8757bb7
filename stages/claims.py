"""DVC stage `audit`: `audit.stages.claims.main` (reads params.yaml, writes the outs dvc.yaml lists)."""

from audit.stages.claims import main

if __name__ == "__main__":
    main()
