"""The docs build without warnings and their generated pages match the code."""

import dataclasses
import subprocess
import sys

from pipelines.docgen import components_markdown, core_function, split_docstring
from pipelines.docgen import main as docgen
from pipelines.kfp_components import Components
from tests.helpers import ROOT


def test_generated_pages_are_current():
    assert docgen(["--check"]) == 0, "run `python -m pipelines.docgen` and commit docs/"


def test_component_reference_covers_every_component_and_its_failure_modes():
    page = components_markdown()
    for field in dataclasses.fields(Components):
        assert f"## `{field.name}`" in page
    # Documented from the plain functions' docstrings, not written by hand.
    assert "Plain function: `components.validate.validate(" in page
    assert "**Failure modes**" in page and "`ValidationFailed`" in page


def test_each_wrapper_is_documented_by_its_step_and_a_wrapped_entry_stays_one_bullet():
    from pipelines import kfp_components

    # Every wrapper ends with freeze_for_exit(); the plain function is still the step's own.
    assert core_function(kfp_components.fingerprint_source).__name__ == "source_fingerprint"

    def only_entry_wrapped():
        """Summary.

        Raises:
            ValueError: A reason that is long enough
                to go on over a second line.
        """

    _, sections = split_docstring(only_entry_wrapped)
    assert sections["Raises"] == "ValueError: A reason that is long enough\n    to go on over a second line."
    page = components_markdown()
    assert "- `DataError`: The source is missing or unreadable, lacks the timestamp column or has unparseable" in page


def test_mkdocs_builds_strict(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    assert (tmp_path / "site" / "components" / "index.html").exists()
