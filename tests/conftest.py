"""Shared fixtures: a model root with a real tiny model, settings in a temporary state folder, services."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tiny_model import build_tiny_model
from webui.services.container import Services
from webui.services.serve_spec import CheckedSpec
from webui.settings import Settings

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FAKE_SERVER = TESTS / "fake_api_server.py"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (random-weight) Llama chat model, built offline once per test run."""
    root = tmp_path_factory.mktemp("tiny-models")
    return build_tiny_model(root / "tiny-llama")


@pytest.fixture
def model_root(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A model root holding the tiny model under a name with spaces and shell metacharacters."""
    root = tmp_path / "models"
    root.mkdir()
    shutil.copytree(tiny_model_dir, root / "tiny llama; echo pwned")
    return root


@pytest.fixture
def settings(tmp_path: Path, model_root: Path) -> Settings:
    return Settings(
        state_dir=tmp_path / "state",
        model_roots=(model_root,),
    )


def fake_argv_factory(*extra: str):
    """Start the stand-in server instead of LMDeploy, with the same arguments the console would pass."""
    from webui.services.serve_spec import cli_args

    def factory(checked: CheckedSpec) -> list[str]:
        args = cli_args(checked.spec, str(checked.model_dir))[2:]  # drop "serve api_server"
        return [sys.executable, str(FAKE_SERVER), *args, *extra]

    return factory


@pytest.fixture
def fake_services(settings: Settings) -> Iterator[Services]:
    """Services whose servers are the stand-in (the READY path without a GPU)."""
    services = Services.build(settings, argv_factory=fake_argv_factory("--grandchild"))
    try:
        yield services
    finally:
        services.close()
