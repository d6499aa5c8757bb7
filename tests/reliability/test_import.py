"""An imported zoo is audited exactly as a trained one: the zoo this pipeline trained, exported in
the nn.Sequential layout (as another tool would save it) and imported with zoo.source: import,
gives the same evaluation table and the same verdicts."""

from __future__ import annotations

import json

import pandas as pd
from safetensors.torch import save_file

from audit.storage import load_weights, read_manifest
from tests.reliability.project import make_project, run_pipeline


def export_sequential(zoo_dir, out_dir) -> int:
    """Every base model as nn.Sequential keys (0.weight, 2.weight, ...), without its normalization."""
    out_dir.mkdir()
    n = 0
    for pool in sorted(zoo_dir.glob("pool-*")):
        for key, entry in read_manifest(pool)["models"].items():
            w = load_weights(pool / entry["file"])
            hidden = sorted(int(k.split(".")[1]) for k in w if k.startswith("hidden.") and k.endswith(".weight"))
            names = {f"hidden.{i}": str(2 * i) for i in hidden} | {"head": str(2 * len(hidden))}
            seq = {f"{names[k.rsplit('.', 1)[0]]}.{k.rsplit('.', 1)[1]}": v for k, v in w.items() if not k.startswith("norm.")}
            save_file(seq, out_dir / f"ckpt-{int(key):04d}.safetensors")
            n += 1
    return n


def test_an_imported_zoo_gives_the_trained_zoos_evaluation_table(tmp_path):
    trained = make_project(tmp_path / "trained", {"zoo": {"pools": 2}})
    run_pipeline(trained, until="claims", here=True)
    assert export_sequential(trained / "models/zoo", tmp_path / "ckpt") == 8
    imported = make_project(tmp_path / "imported", {"zoo": {"pools": 2, "source": "import",
                                                            "import": {"path": str(tmp_path / "ckpt")}}})
    run_pipeline(imported, until="claims", here=True)
    manifest = read_manifest(imported / "models/zoo/pool-1")["models"]
    assert manifest["5"]["imported_from"].endswith("ckpt-0005.safetensors") and len(manifest["5"]["source_sha256"]) == 64
    a = pd.read_csv(trained / "results/evaluation.csv")
    b = pd.read_csv(imported / "results/evaluation.csv")
    pd.testing.assert_frame_equal(a, b)
    verdicts = [{c["id"]: c["verdict"] for c in json.loads((p / "results/claims.json").read_text())}
                for p in (trained, imported)]
    assert verdicts[0] == verdicts[1]
