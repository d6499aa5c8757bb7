"""The DVC stages, one module each: ``run(params, root)`` computes the stage's outs (see
`audit.paths`), ``main()`` is what ``stages/<stage>.py`` calls. A stage imports only what it
computes with, and dvc.yaml lists exactly those modules as its deps (tests/test_stage_deps.py)."""
