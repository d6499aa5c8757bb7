"""Bad params: for every section of params.yaml, an unknown key, a wrong type, an out-of-range value
and a missing value each give one line naming the key, the value and what is allowed; the stages
and the CLI exit non-zero without a traceback and leave what was computed untouched."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from audit.cli import main
from audit.config import ConfigError, Params, params_from_dict

from tests.conftest import REPO

from tests.reliability.project import make_project, params_dict, run_here, run_pipeline, run_stage, snapshot, write_params

# section -> (unknown key, wrong type, out of range, missing value): (raw, text the message must hold)
CASES = {
    "data": [({"data": {"nmae": "digits"}}, "data.nmae: unknown key (value 'digits'); allowed: name, root"),
             ({"data": {"download": "no"}}, "data.download: expected true or false, got 'no'"),
             ({"data": {"test_fraction": 1.5}}, "data.test_fraction: must be in (0, 1), got 1.5"),
             ({"data": {"name": None}}, "data.name: missing value; expected a string")],
    "zoo": [({"zoo": {"epochs": 3}}, "zoo.epochs: unknown key (value 3); allowed: arch, depth, pools"),
            ({"zoo": {"pools": "two"}}, "zoo.pools: expected an integer, got 'two'"),
            ({"zoo": {"train": {"batch_size": 0}}}, "zoo.train.batch_size: must be >= 1, got 0"),
            ({"zoo": {"depth": None}}, "zoo.depth: missing value; expected an integer")],
    "merge": [({"merge": {"lambda": 0.5}}, "merge.lambda: unknown key (value 0.5); allowed: methods, seeds"),
              ({"merge": {"seeds": 3}}, "merge.seeds: expected a list, got 3"),
              ({"merge": {"lam": 1.5}}, "merge.lam: must be in [0, 1], got 1.5"),
              ({"merge": {"permute": None}}, "merge.permute: missing value; expected a string")],
    "eval": [({"eval": {"metrics": {"fgsm": [0.1]}}}, "eval.metrics.fgsm: unknown key (value [0.1]); allowed: fgsm_eps"),
             ({"eval": {"barrier_points": 2.5}}, "eval.barrier_points: expected an integer, got 2.5"),
             ({"eval": {"metrics": {"deepfool_eps": [-1]}}}, "eval.metrics.deepfool_eps"),
             ({"eval": {"metrics": {"seed": None}}}, "eval.metrics.seed: missing value; expected an integer")],
    "audit": [({"audit": {"alfa": 0.05}}, "audit.alfa: unknown key (value 0.05); allowed: alpha"),
              ({"audit": {"bootstrap": "many"}}, "audit.bootstrap: expected an integer, got 'many'"),
              ({"audit": {"bootstrap": 10}}, "audit.bootstrap: must be >= 100, got 10"),
              ({"audit": {"alpha": None}}, "audit.alpha: missing value; expected a number")],
    "tracking": [({"tracking": {"url": "x"}}, "tracking.url: unknown key (value 'x'); allowed: uri"),
                 ({"tracking": {"uri": 5}}, "tracking.uri: expected a string, got 5"),
                 ({"tracking": {"enabled": 2}}, "tracking.enabled: expected true or false, got 2"),
                 ({"tracking": {"uri": None}}, "tracking.uri: missing value; expected a string")],
    "executor": [({"executer": "ray"}, "executer: unknown key (value 'ray'); allowed: data, zoo"),
                 ({"executor": ["ray"]}, "executor: expected a string, got ['ray']"),
                 ({"executor": "spark"}, "executor: unknown value 'spark'; allowed: local, ray"),
                 ({"executor": None}, "executor: missing value; expected a string")],
    "ray": [({"ray": {"adress": "x:1"}}, "ray.adress: unknown key (value 'x:1'); allowed: address"),
            ({"ray": {"retries": "2"}}, "ray.retries: expected an integer, got '2'"),
            ({"ray": {"gpus_per_task": 2}}, "ray.gpus_per_task: must be in [0, 1], got 2.0"),
            ({"ray": {"retries": None}}, "ray.retries: missing value; expected an integer")],
    "resources": [({"resources": {"hours": 3}}, "resources.hours: unknown key (value 3); allowed: max_hours"),
                  ({"resources": {"disk_margin_gib": "1G"}}, "resources.disk_margin_gib: expected a number, got '1G'"),
                  ({"resources": {"max_hours": -1}}, "resources.max_hours: must be > 0 or null, got -1.0"),
                  ({"resources": {"disk_margin_gib": None}}, "resources.disk_margin_gib: missing value; expected a number")],
    "sensitivity": [({"sensitivity": {"factor": {}}}, "sensitivity.factor: unknown key (value {}); allowed: scale"),
                    ({"sensitivity": {"jobs": "two"}}, "sensitivity.jobs: expected an integer, got 'two'"),
                    ({"sensitivity": {"jobs": 0}}, "sensitivity.jobs: must be >= 1, got 0"),
                    ({"sensitivity": {"scale": None}}, "sensitivity.scale: missing value; expected a mapping")],
}
KINDS = ("unknown key", "wrong type", "out of range", "missing value")


def test_every_section_of_params_yaml_is_covered():
    shipped = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(CASES) == set(shipped) == {f.name for f in dataclasses.fields(Params)}


@pytest.mark.parametrize("section, kind, raw, message",
                         [(s, KINDS[i], raw, msg) for s, cases in CASES.items() for i, (raw, msg) in enumerate(cases)])
def test_bad_value_is_one_line_naming_key_value_and_what_is_allowed(section, kind, raw, message):
    with pytest.raises(ConfigError) as err:
        params_from_dict(raw, source="params.yaml")
    text = str(err.value)
    assert text.startswith("params.yaml: ") and message in text and "\n" not in text, text


@pytest.fixture(scope="module")
def computed(tmp_path_factory):
    """A project whose data, train and merge stages ran with good params."""
    root = make_project(tmp_path_factory.mktemp("computed"), {"merge": {"methods": ["naive"]}})
    run_pipeline(root, methods=["naive"], until="merge", here=True)
    return root


@pytest.mark.parametrize("stage", ["data", "train", "merge", "evaluate", "claims", "report"])
def test_stages_refuse_bad_params_in_one_line_and_touch_nothing(computed, stage):
    before = snapshot(computed)
    bad = write_params(computed, {"merge": {"methods": ["naive"]}}, {"zoo": {"train": {"lr": -0.1}}}, name="bad.yaml")
    args = ("--params", str(bad)) + (("--method", "naive") if stage == "merge" else ())
    # One stage as the subprocess DVC starts; the others through the same entry point in-process.
    out = run_stage(computed, stage, *args, check=False) if stage == "train" else run_here(computed, stage, *args)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [f"error: {bad}: zoo.train.lr: must be >= 0, got -0.1"]
    assert "Traceback" not in out.stdout + out.stderr
    assert snapshot(computed) == before


@pytest.mark.parametrize("command", [["compare", "--baseline", "mergemany"], ["claims"], ["report"], ["plan"],
                                     ["ui", "--dry-run"]])
def test_cli_commands_refuse_bad_params_in_one_line(tmp_path, command):
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(params_dict({"audit": {"alpha": 2}})))
    res = CliRunner().invoke(main, [*command, "--params", str(bad)])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit)
    assert res.output.strip().splitlines() == [f"Error: {bad}: audit.alpha: must be in (0, 1), got 2.0"]


def test_the_audit_command_itself_prints_no_traceback(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("zoo:\n  depth: [\n")
    audit = Path(sys.executable).parent / "audit"  # the installed console script
    out = subprocess.run([str(audit), "claims", "--params", str(bad)], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[0].startswith(f"Error: {bad}: not valid YAML (line")
