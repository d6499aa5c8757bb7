"""Regenerate the golden fixture: tiny base models and what this project computes from them.

    uv run python -m tests.golden.make          # writes tests/golden/*.safetensors, expected.json

Run it only when a change in results is intended, and say why in the commit: tests/test_golden.py
compares today's code with these numbers, so a change in results is noticed, not only a
difference between two runs of the same code. The base models are committed (not retrained by
the test) so that what is pinned is the merging and evaluation, exactly, on any machine.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from tests.golden.compute import HERE, compute


def main() -> None:
    from audit.data import load_dataset
    from audit.zoo import TrainConfig, train_batched

    data = load_dataset("digits")
    for m in train_batched(data, (16, 16), TrainConfig(epochs=3, lr=1e-3, batch_size=64), [0, 1, 2, 3]):
        save_file(m.params, str(HERE / f"base-{m.seed}.safetensors"))
    (HERE / "expected.json").write_text(json.dumps(compute(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {sorted(p.name for p in Path(HERE).iterdir() if p.suffix in ('.json', '.safetensors'))}")


if __name__ == "__main__":
    main()
