"""Run Qt-free panel tests under an interpreter without pytest (Slicer 5.6/5.8's Python 3.9, standard
library only): ``python3.9 Testing/py39_runner.py Testing/test_panel_x.py ...``.

A small stand-in for the part of pytest these files use (``raises``, ``fixture``, ``mark.parametrize``,
``skip``/``importorskip``, the ``tmp_path`` and ``monkeypatch`` fixtures), so the same test files run
here and under pytest.  Prints one JSON line ``{"passed": [...], "failed": {...}, "skipped": [...]}``
and exits 1 when a test failed.  Called by Testing/test_python39.py.
"""

import contextlib
import importlib.util
import inspect
import json
import os
import re
import shutil
import sys
import tempfile
import traceback
import types


class Skipped(Exception):
    pass


class _Raises:
    def __init__(self, expected, match=None):
        self.expected, self.match, self.value = expected, match, None

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        if kind is None:
            raise AssertionError(f"DID NOT RAISE {self.expected}")
        if not issubclass(kind, self.expected):
            return False
        if self.match is not None and not re.search(self.match, str(value)):
            raise AssertionError(f"{self.match!r} does not match {str(value)!r}")
        self.value = value
        return True


class _MonkeyPatch:
    def __init__(self):
        self._undo = []

    def setattr(self, target, name, value, raising=True):
        old = getattr(target, name)
        self._undo.append(lambda: setattr(target, name, old))
        setattr(target, name, value)

    def setenv(self, name, value):
        old = os.environ.get(name)
        self._undo.append(lambda: os.environ.pop(name, None) if old is None else os.environ.__setitem__(name, old))
        os.environ[name] = str(value)

    def delenv(self, name, raising=True):
        if name in os.environ:
            old = os.environ.pop(name)
            self._undo.append(lambda: os.environ.__setitem__(name, old))

    def undo(self):
        while self._undo:
            self._undo.pop()()


def _pytest_module():
    module = types.ModuleType("pytest")
    module.raises = _Raises
    module.fixture = lambda *args, **kwargs: (args[0] if args and callable(args[0]) else (lambda f: f))

    def skip(reason="", allow_module_level=False):
        raise Skipped(reason)

    def importorskip(name, reason=None, **_kwargs):
        try:
            return __import__(name)
        except ImportError:
            raise Skipped(reason or f"{name} is not installed")

    def parametrize(names, values, ids=None):
        def mark(function):
            function.parametrize = ([n.strip() for n in names.split(",")] if isinstance(names, str) else list(names), values)
            return function
        return mark

    def fail(reason="", pytrace=True):
        raise AssertionError(reason or "failed")

    module.skip, module.importorskip, module.fail = skip, importorskip, fail
    module.mark = types.SimpleNamespace(parametrize=parametrize)
    return module


def _call(test, module, arguments):
    """Run one test function with its fixtures (tmp_path, monkeypatch, the file's own)."""
    with contextlib.ExitStack() as stack:
        patch = _MonkeyPatch()
        stack.callback(patch.undo)
        values = dict(arguments)
        for name in inspect.signature(test).parameters:
            if name in values:
                continue
            if name == "tmp_path":
                from pathlib import Path

                folder = tempfile.mkdtemp(prefix="py39-")
                stack.callback(shutil.rmtree, folder, True)
                values[name] = Path(folder)
            elif name == "monkeypatch":
                values[name] = patch
            elif callable(getattr(module, name, None)):
                value = _call(getattr(module, name), module, {"monkeypatch": patch, **values})
                if inspect.isgenerator(value):
                    generator, value = value, next(value)
                    stack.callback(lambda g=generator: next(g, None))
                values[name] = value
            else:
                raise Skipped(f"fixture {name!r} is not available in py39_runner")
        return test(**values)


def run_file(path, report):
    sys.modules["pytest"] = _pytest_module()
    name = "py39_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Skipped as exc:
        report["skipped"].append(f"{path}: {exc}")
        return
    for attribute, test in sorted(vars(module).items()):
        if not attribute.startswith("test_") or not callable(test):
            continue
        names, cases = getattr(test, "parametrize", ([], [()]))
        for index, case in enumerate(cases):
            case = case if isinstance(case, (tuple, list)) and len(names) > 1 else (case,)
            test_id = f"{os.path.basename(path)}::{attribute}" + (f"[{index}]" if names else "")
            try:
                _call(test, module, dict(zip(names, case)))
                report["passed"].append(test_id)
            except Skipped as exc:
                report["skipped"].append(f"{test_id}: {exc}")
            except Exception:  # noqa: BLE001 - every failure is reported with its traceback
                report["failed"][test_id] = traceback.format_exc(limit=6)


def main(paths):
    report = {"python": sys.version.split()[0], "passed": [], "failed": {}, "skipped": []}
    for path in paths:
        run_file(path, report)
    print(json.dumps(report))
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
