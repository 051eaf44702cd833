"""pytest plugin: under CI (``CI=true``) a skip is a failure unless it is on the allow-list.

The README's test command (``make test``) is what CI runs (``.ci/run``), so a missing ``slicer-core``
or a missing ``../shared`` must not turn dozens of tests into silent skips there.  Outside CI nothing
changes: the tests skip with their reason (``-ra`` prints it) and one line at the end says that CI
would not accept those skips.

The allow-list is ``Testing/allowed_skips.txt`` (``ACTIONPP_ALLOWED_SKIPS`` names another file).  Each
entry is ``<test id> | <text the skip reason must contain>``; the test id is matched with ``fnmatch``
(so ``*`` covers parametrized ids) against pytest's node id relative to the rootdir.  Both parts must
match: an allowed test that skips for another reason still fails CI.

- A test skipped in setup (``skipif``, a fixture's ``pytest.skip``) or in its body becomes a failure
  (setup: reported as an error) whose message names the reason and the allow-list.
- A whole module skipped at collection (``importorskip`` at module level) cannot be turned into a
  test failure without aborting the session, so it is listed at the end and the run's exit status is
  set to "tests failed".
- ``xfail`` is not a skip and is left alone.

Loaded by ``Testing/conftest.py`` (``pytest_plugins``); ``-p strict_skips`` loads it elsewhere.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

ALLOW_LIST = Path(__file__).with_name("allowed_skips.txt")
TRUE_VALUES = ("1", "true", "yes", "on")


def ci_enabled(environ=os.environ) -> bool:
    return environ.get("CI", "").strip().lower() in TRUE_VALUES


@dataclass(frozen=True)
class AllowedSkip:
    test_id: str  # fnmatch pattern on the node id
    reason: str  # must occur in the skip reason

    def matches(self, node_id: str, reason: str) -> bool:
        return fnmatch.fnmatchcase(node_id, self.test_id) and self.reason in reason


def read_allow_list(path: Path) -> list[AllowedSkip]:
    """Entries of an allow-list file; blank lines and ``#`` comments are ignored."""
    entries = []
    for number, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        test_id, sep, reason = (part.strip() for part in line.partition("|"))
        if not sep or not test_id or not reason:
            raise ValueError(f"{path}:{number}: expected '<test id> | <reason text>', got {raw!r}")
        entries.append(AllowedSkip(test_id, reason))
    return entries


def skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = str(longrepr[2])
    else:
        reason = str(longrepr)
    return reason.removeprefix("Skipped: ")


class StrictSkips:
    def __init__(self, allow_list_path: Path, strict: bool) -> None:
        self.path = allow_list_path
        self.allowed = read_allow_list(allow_list_path)
        self.strict = strict
        self.unexpected: list[tuple[str, str]] = []  # (node id, reason), tests and modules

    def is_allowed(self, node_id: str, reason: str) -> bool:
        return any(entry.matches(node_id, reason) for entry in self.allowed)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        if not report.skipped or hasattr(report, "wasxfail"):
            return
        reason = skip_reason(report)
        if self.is_allowed(report.nodeid, reason):
            return
        self.unexpected.append((report.nodeid, reason))
        if self.strict:
            report.outcome = "failed"
            report.longrepr = (f"CI=true: unexpected skip: {reason}\n"
                               f"A skip fails under CI unless it is listed in {self.path}.")

    def pytest_collectreport(self, report):
        if report.skipped and not self.is_allowed(report.nodeid, skip_reason(report)):
            self.unexpected.append((report.nodeid, skip_reason(report)))

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session, exitstatus):
        if self.strict and self.unexpected and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter):
        if not self.unexpected:
            return
        if self.strict:
            terminalreporter.section("unexpected skips (CI=true)", red=True)
            for node_id, reason in self.unexpected:
                terminalreporter.line(f"{node_id}: {reason}")
            terminalreporter.line(f"{len(self.unexpected)} unexpected skip(s): the run fails. "
                                  f"Allowed skips are listed in {self.path}.")
        else:
            terminalreporter.line(f"{len(self.unexpected)} test(s) or module(s) skipped (reasons above); "
                                  f"under CI=true these skips would fail the run (allowed: {self.path}).")


def pytest_configure(config):
    path = Path(os.environ.get("ACTIONPP_ALLOWED_SKIPS", ALLOW_LIST))
    config.pluginmanager.register(StrictSkips(path, ci_enabled()), "strict_skips_state")
