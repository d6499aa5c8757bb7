import pytest
import yaml

from audit.config import ConfigError, Params, load_params, params_from_dict, to_dict

REPO_PARAMS = "params.yaml"


def test_the_shipped_params_file_is_valid_and_explicit(tmp_path):
    from tests.conftest import REPO
    params = load_params(REPO / REPO_PARAMS)
    # The decisive default: the paper's depth, several pools (trends over pools), MergeMany uncapped.
    assert params.data.name == "digits" and params.zoo.arch == "paper-half" and params.zoo.depth >= 4
    assert params.zoo.pools >= 4 and params.merge.mergemany_max_iter >= 100
    assert set(params.merge.methods) == {"hierarchical", "mergemany", "naive"} and len(params.merge.seeds) > 1
    assert {"l1", "l2"} <= set(params.zoo.regularized)
    # Every knob is written out: the file round-trips to exactly the loaded values.
    raw = yaml.safe_load((REPO / REPO_PARAMS).read_text())
    assert params_from_dict(raw) == params
    assert params_from_dict(to_dict(params)) == params


@pytest.mark.parametrize("raw, message", [
    ({"zoo": {"lr": 0.1}}, "zoo.lr: unknown key (value 0.1); allowed: arch, depth"),
    ({"zoo": {"train": {"lr": -1}}}, "zoo.train.lr: must be >= 0, got -1.0"),
    ({"zoo": {"train": {"lr": "fast"}}}, "zoo.train.lr: expected a number, got 'fast'"),
    ({"zoo": {"train": {"epochs": 2.5}}}, "zoo.train.epochs: expected an integer, got 2.5"),
    ({"zoo": {"depth": 0}}, "zoo.depth: must be an integer in 1..12"),
    ({"zoo": {"arch": "huge"}}, "zoo.arch: unknown value 'huge'; allowed: paper, rebasin"),
    ({"data": {"name": "imagenet"}}, "data.name: unknown value 'imagenet'; allowed: digits"),
    ({"data": {"name": "idx"}}, "data.path: required when name is idx"),
    ({"merge": {"methods": ["hierarchical", "git"]}}, "merge.methods: unknown value 'git'"),
    ({"merge": {"permute": "both"}}, "merge.permute: unknown value 'both'; allowed: first, second"),
    ({"merge": {"side_ablation": [5]}}, "merge.side_ablation: depth 5 exceeds zoo.depth 4"),
    ({"eval": {"metrics": {"fgsm_eps": [0.1, 2]}}}, "eval.metrics.fgsm_eps: eps must be in [0, 1], got 2.0"),
    ({"eval": {"metrics": {"pgd_steps": 0}}}, "eval.metrics.pgd_steps: must be a positive integer"),
    ({"audit": {"alpha": 1.5}}, "audit.alpha: must be in (0, 1)"),
    ({"tracking": {"enabled": "yes"}}, "tracking.enabled: expected true or false"),
    ({"zoo": {"regularized": {"l2": {"l3": 1}}}}, "zoo.regularized.l2.l3: unknown key (value 1); allowed: l1, l2"),
    ([1, 2], "(top level): expected a mapping"),
])
def test_bad_values_name_the_key_and_what_is_allowed(raw, message):
    with pytest.raises(ConfigError) as err:
        params_from_dict(raw, source="p.yaml")
    text = str(err.value)
    assert text.startswith("p.yaml: ") and message in text and "\n" not in text


def test_yaml_exponents_are_numbers_and_defaults_fill_the_rest(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("zoo:\n  train:\n    lr: 1e-3\n  arch: [64, 32]\n")
    params = load_params(path)
    assert params.zoo.train.lr == 1e-3 and params.zoo.arch == (64, 32)
    assert params.merge == Params().merge


def test_unreadable_files_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml: params file not found"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("zoo: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML \(line"):
        load_params(bad)


def test_the_defaults_are_the_shipped_params_file():
    """Each default lives in one place: the dataclasses; params.yaml states the same values."""
    import yaml

    from audit.config import Params, to_dict
    from tests.conftest import REPO

    assert yaml.safe_load((REPO / "params.yaml").read_text()) == to_dict(Params())


def test_every_preset_states_every_knob_and_loads():
    import yaml

    from audit.config import Params, load_params, to_dict
    from tests.conftest import REPO

    def keys(d, prefix=""):
        return {f"{prefix}{k}" for k, v in d.items()} | {x for k, v in d.items() if isinstance(v, dict) and k not in ("regularized", "scale", "factors")
                                                       for x in keys(v, f"{prefix}{k}.")}

    want = keys(to_dict(Params()))
    for path in sorted((REPO / "params").glob("*.yaml")):
        load_params(path)
        assert keys(yaml.safe_load(path.read_text())) == want, path.name


def test_reading_params_imports_no_torch():
    import subprocess
    import sys

    from tests.conftest import REPO

    code = "import sys; from audit.config import load_params; load_params('params.yaml'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
