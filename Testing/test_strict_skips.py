"""The CI skip policy (Testing/strict_skips.py): under CI=true a skip fails unless allow-listed.

The plugin runs in a pytest subprocess on a small generated test folder, once with CI=true and once
without, so what is checked is the exit status and the report a CI log would show.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from strict_skips import ALLOW_LIST, AllowedSkip, ci_enabled, read_allow_list

TESTING = Path(__file__).resolve().parent
REPO = TESTING.parent

GENERATED = {
    "test_plain.py": """
        import pytest

        def test_passes():
            assert True

        def test_skipped_in_body():
            pytest.skip("optional tool missing")

        @pytest.fixture
        def data():
            pytest.skip("data folder absent")

        def test_skipped_by_fixture(data):
            pass

        @pytest.mark.skipif(True, reason="not on this platform")
        def test_skipped_by_mark():
            pass

        def test_allowed_skip():
            pytest.skip("the renderer is not installed here")

        def test_allowed_name_other_reason():
            pytest.skip("something else broke")

        @pytest.mark.parametrize("n", [1, 2])
        def test_allowed_by_pattern(n):
            pytest.skip("flaky hardware absent")

        @pytest.mark.xfail(reason="known bug", strict=True)
        def test_expected_failure():
            assert False
    """,
    "test_module_skip.py": """
        import pytest
        pytest.importorskip("a_module_that_does_not_exist_anywhere", reason="the optional module is missing")

        def test_never_collected():
            pass
    """,
}

ALLOWED = """
    # comment lines and blank lines are ignored

    test_plain.py::test_allowed_skip | renderer is not installed
    test_plain.py::test_allowed_name_other_reason | renderer is not installed
    test_plain.py::test_allowed_by_pattern[* | flaky hardware absent
"""


def _run_pytest(folder: Path, ci: str | None, allow_list: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS", "PYTEST_PLUGINS")}
    if ci is not None:
        env["CI"] = ci
    env["ACTIONPP_ALLOWED_SKIPS"] = str(allow_list)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTING), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "strict_skips", "-p", "no:cacheprovider", "-rA", "-q",
         "--rootdir", str(folder), str(folder)],
        cwd=folder, env=env, capture_output=True, text=True, timeout=120,
    )


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("strict_skips")
    (folder / "pytest.ini").write_text("[pytest]\n")
    for name, source in GENERATED.items():
        (folder / name).write_text(textwrap.dedent(source))
    allow = folder / "allowed.txt"
    allow.write_text(textwrap.dedent(ALLOWED))
    return folder, allow


def _line_for(output: str, outcome: str, test: str) -> bool:
    return any(line.startswith(f"{outcome} {test}") for line in output.splitlines())


def test_without_ci_skips_pass_with_their_reasons(generated):
    folder, allow = generated
    result = _run_pytest(folder, None, allow)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "1 passed" in out and "8 skipped" in out and "1 xfailed" in out, out
    for reason in ("optional tool missing", "data folder absent", "not on this platform", "the optional module is missing"):
        assert reason in out
    # the closing line tells a user what CI would say (5 unexpected: body, fixture, mark, other reason, module)
    assert "5 test(s) or module(s) skipped" in out and "under CI=true these skips would fail" in out, out


def test_ci_false_is_not_strict(generated):
    folder, allow = generated
    result = _run_pytest(folder, "false", allow)
    assert result.returncode == 0 and "8 skipped" in result.stdout, result.stdout


def test_ci_true_fails_every_skip_not_on_the_allow_list(generated):
    folder, allow = generated
    result = _run_pytest(folder, "true", allow)
    out = result.stdout
    assert result.returncode == int(pytest.ExitCode.TESTS_FAILED), out + result.stderr
    # a skip in the body fails the test; a skip in setup (fixture, skipif mark) is a setup error
    assert _line_for(out, "FAILED", "test_plain.py::test_skipped_in_body"), out
    assert _line_for(out, "ERROR", "test_plain.py::test_skipped_by_fixture"), out
    assert _line_for(out, "ERROR", "test_plain.py::test_skipped_by_mark"), out
    # an allowed test id with another reason is not allowed
    assert _line_for(out, "FAILED", "test_plain.py::test_allowed_name_other_reason"), out
    # allowed: the exact id and the pattern over parametrized ids
    assert not _line_for(out, "FAILED", "test_plain.py::test_allowed_skip"), out
    assert not _line_for(out, "FAILED", "test_plain.py::test_allowed_by_pattern"), out
    # 4 skipped: the 3 allowed ones and the module (pytest counts a collection skip as skipped)
    assert "4 skipped" in out and "1 passed" in out and "1 xfailed" in out, out
    assert "2 failed" in out and "2 errors" in out, out
    # the module skipped at collection cannot become a test failure: it is listed and fails the run
    assert "unexpected skips (CI=true)" in out
    assert "test_module_skip.py: the optional module is missing" in out
    assert "5 unexpected skip(s): the run fails" in out
    assert "CI=true: unexpected skip: data folder absent" in out


def test_ci_true_with_only_allowed_skips_passes(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_plain.py").write_text(textwrap.dedent("""
        import pytest

        def test_passes():
            pass

        def test_allowed_skip():
            pytest.skip("the renderer is not installed here")

        @pytest.mark.parametrize("n", [1, 2])
        def test_allowed_by_pattern(n):
            pytest.skip("flaky hardware absent")
    """))
    allow = tmp_path / "allowed.txt"
    allow.write_text(textwrap.dedent(ALLOWED))
    result = _run_pytest(tmp_path, "true", allow)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed, 3 skipped" in result.stdout and "unexpected skips" not in result.stdout


def test_ci_enabled_values():
    assert ci_enabled({"CI": "true"}) and ci_enabled({"CI": "TRUE"}) and ci_enabled({"CI": "1"})
    assert not ci_enabled({}) and not ci_enabled({"CI": "false"}) and not ci_enabled({"CI": "0"})


def test_allow_list_format_errors(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("Testing/test_x.py::test_y\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        read_allow_list(bad)
    bad.write_text("# fine\nTesting/test_x.py::test_y |   \n")
    with pytest.raises(ValueError, match="bad.txt:2"):
        read_allow_list(bad)


def test_the_project_allow_list_is_short_and_names_real_tests():
    """Today's allowed skips: the offscreen panel render without PySide6, and the read-only-folder check,
    which cannot run as root (CI runs as root).  Every entry must name a test that exists, with a reason
    that test really gives, so no entry can cover a whole module."""
    entries = read_allow_list(ALLOW_LIST)
    assert entries == [
        AllowedSkip("Testing/test_module_file.py::test_ui_renders_offscreen", "PySide6 is not installed"),
        AllowedSkip("Testing/test_run_safety.py::test_read_only_folder_is_one_line", "root writes into read-only folders"),
    ]
    for entry in entries:
        path, _, name = entry.test_id.partition("::")
        assert name and "*" not in path, entry
        source = (REPO / path).read_text()
        assert f"def {name.split('[')[0]}(" in source, entry
        assert entry.reason in source, entry


def test_ci_entry_point_runs_the_readme_command_strictly():
    run = (REPO / ".ci" / "run").read_text()
    commands = [line.strip() for line in run.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert "export CI=true" in commands and commands[-1] == "make test", commands
    assert "make test" in (REPO / "README.md").read_text()
    conftest = (TESTING / "conftest.py").read_text()
    assert 'pytest_plugins = ("strict_skips",)' in conftest
