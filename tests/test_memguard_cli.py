from typer.testing import CliRunner

from memguard.cli import app


def test_demo_says_not_built_and_fails():
    result = CliRunner().invoke(app, ["demo"])
    assert result.exit_code == 1
    assert "not built yet" in result.output


def test_version():
    result = CliRunner().invoke(app, ["version"])
    assert result.exit_code == 0
    assert result.output.strip() == "0.1.0"
