"""The client's base exception is ``GradserveError``; ``GradservError``, its earlier
misspelt name, still works for one release, with a DeprecationWarning."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

import gradserve_client
from gradserve_client import errors
from tests.conftest import ROOT


def test_gradserve_error_is_the_base_of_every_client_error() -> None:
    base = gradserve_client.GradserveError
    assert base is errors.GradserveError
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), base), name
    assert "GradserveError" in gradserve_client.__all__
    assert "GradservError" not in gradserve_client.__all__ and "GradservError" not in errors.__all__


@pytest.mark.parametrize("module", [gradserve_client, errors], ids=["package", "errors"])
def test_old_name_is_a_deprecated_alias(module: object) -> None:
    with pytest.warns(DeprecationWarning, match="use GradserveError") as caught:
        alias = module.GradservError  # type: ignore[attr-defined]
    assert alias is errors.GradserveError
    assert caught[0].filename == __file__  # points at the caller's line


def test_old_name_still_catches_errors() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from gradserve_client import GradservError
    with pytest.raises(GradservError):
        raise gradserve_client.NotFoundError("no op")


def test_new_name_imports_without_a_warning() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-W",
            "error::DeprecationWarning",
            "-c",
            "from gradserve_client import GradserveError",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_unknown_attributes_still_raise() -> None:
    with pytest.raises(AttributeError):
        _ = gradserve_client.NoSuchThing  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        _ = errors.NoSuchThing  # type: ignore[attr-defined]
