import pytest

from tests.reliability.project import make_project


@pytest.fixture
def project(tmp_path):
    """A fresh scratch project with the small params."""
    return make_project(tmp_path / "project")
