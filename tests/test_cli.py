from click.testing import CliRunner

from audit import __version__
from audit.cli import main


def test_version_and_help():
    runner = CliRunner()
    res = runner.invoke(main, ["--version"])
    assert res.exit_code == 0 and __version__ in res.output and __version__ != "0+unknown"
    res = runner.invoke(main, ["--help"])
    assert res.exit_code == 0 and "Usage: audit" in res.output
