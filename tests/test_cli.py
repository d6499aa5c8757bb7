from click.testing import CliRunner

from audit import __version__
from audit.cli import main


def test_version_and_help():
    runner = CliRunner()
    res = runner.invoke(main, ["--version"])
    assert res.exit_code == 0 and __version__ in res.output and __version__ != "0+unknown"
    res = runner.invoke(main, ["--help"])
    assert res.exit_code == 0 and "Usage: audit" in res.output


def test_ui_prints_the_url_and_a_lean_mlflow_command(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("tracking:\n  uri: sqlite:///runs.db\n")
    res = CliRunner().invoke(main, ["ui", "--params", str(params), "--port", "5055", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "MLflow UI: http://127.0.0.1:5055" in res.output
    cmd = res.output.strip().splitlines()[-1]
    assert cmd.split()[1:] == ["ui", "--backend-store-uri", "sqlite:///runs.db", "--host", "127.0.0.1",
                               "--port", "5055", "--workers", "1"]


def test_ui_with_bad_params_is_one_line(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("tracking:\n  url: x\n")
    res = CliRunner().invoke(main, ["ui", "--params", str(params)])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [f"Error: {params}: tracking.url: unknown key; allowed: uri, experiment_prefix, enabled"]
