"""The module's helpers that moved out of the module file into the panel's pure-Python helpers, run
without Slicer: the dependency installation flow (``panel.dependencies``, with a fake Slicer host),
the remembered settings (``panel.remembered``, with a dict for QSettings), whether a dialog may be shown
(``api_versions.is_interactive``) and the watched run (``panel.active_run``)."""

from __future__ import annotations

import contextlib
import types

import pytest

from ACTIONPlusPlusLib.slicer_bridge.panel import active_run, api_versions, dependencies, install_plan, remembered


class FakeTorchLogic:
    def __init__(self, installed: bool = False, install_works: bool = True):
        self.installed, self.install_works, self.calls = installed, install_works, []

    def torchInstalled(self) -> bool:  # the real one imports torch: never called by the panel
        raise AssertionError("torchInstalled() imports torch into Slicer's process")

    def installTorch(self, askConfirmation=True, torchVersionRequirement=None):
        self.calls.append((askConfirmation, torchVersionRequirement))
        self.installed = self.install_works
        return object() if self.install_works else None


@pytest.fixture
def state(monkeypatch):
    """psutil missing until a pip call installs it; torch as the fake extension says; no version problem."""
    box = {"extras": ["psutil>=5.9"], "pip": [], "busy": 0}
    monkeypatch.setattr(install_plan, "missing_requirements", lambda *a, **k: list(box["extras"]))
    monkeypatch.setattr(install_plan, "torch_version_problem", lambda *a, **k: None)

    def pip_install(command):
        box["pip"].append(command)
        box["extras"] = [r for r in box["extras"] if not command.startswith(r)]

    @contextlib.contextmanager
    def busy():
        box["busy"] += 1
        yield

    box["pip_install"], box["busy_cm"] = pip_install, busy
    return box


def _host(state, torch_logic, **changes):
    options = dict(torch_logic=torch_logic, pip_install=state["pip_install"], confirm=lambda text: True,
                   interactive=True, busy=state["busy_cm"], torch_found=lambda: torch_logic.installed)
    options.update(changes)
    return dependencies.InstallHost(**options)


def test_nothing_missing_installs_nothing(state):
    state["extras"] = []
    asked = []
    host = _host(state, FakeTorchLogic(installed=True), confirm=lambda text: asked.append(text) or True)
    assert dependencies.ensure(host, print) is False and asked == [] and state["pip"] == []


def test_one_confirmation_then_each_step_logged(state):
    torch, log, asked = FakeTorchLogic(), [], []
    host = _host(state, torch, confirm=lambda text: asked.append(text) or True)
    assert dependencies.ensure(host, log.append) is True
    assert len(asked) == 1 and "torch>=2.1" in asked[0] and "psutil>=5.9" in asked[0]
    assert torch.calls == [(False, ">=2.1")]  # through the PyTorch extension, no second question
    assert state["pip"] == ["psutil>=5.9"] and state["busy"] == 2
    assert log[0].startswith("Installing torch>=2.1 through the PyTorch extension") and log[-1].endswith(": done.")


def test_headless_never_asks_and_says_how(state):
    host = _host(state, FakeTorchLogic(), interactive=False, confirm=lambda text: pytest.fail("asked headless"))
    with pytest.raises(RuntimeError, match="--no-main-window"):
        dependencies.ensure(host, print)


def test_declined_and_failed_steps_raise_with_the_manual_command(state):
    with pytest.raises(RuntimeError, match="declined"):
        dependencies.ensure(_host(state, FakeTorchLogic(), confirm=lambda text: False), print)
    log = []
    with pytest.raises(RuntimeError, match="did not install torch") as error:
        dependencies.ensure(_host(state, FakeTorchLogic(install_works=False)), log.append)
    assert "installTorch(askConfirmation=True" in str(error.value) and str(error.value) in log


def test_an_old_torch_is_never_replaced(state, monkeypatch):
    monkeypatch.setattr(install_plan, "torch_version_problem", lambda *a, **k: "torch 1.13 is installed; update it")
    torch = FakeTorchLogic(installed=True)
    with pytest.raises(RuntimeError, match="torch 1.13"):
        dependencies.ensure(_host(state, torch), print)
    assert torch.calls == [] and state["pip"] == []


def test_pip_ensure_skips_protected_packages(state):
    calls = []

    def pip_ensure(requirements, skip_packages=(), prompt_install=True, requester=None):
        calls.append((str(requirements[0]), skip_packages, prompt_install))
        state["extras"] = []

    dependencies.ensure(_host(state, FakeTorchLogic(installed=True), pip_ensure=pip_ensure), print)
    assert calls == [("psutil>=5.9", list(install_plan.PROTECTED_PACKAGES), False)] and state["pip"] == []


def test_still_missing_after_the_steps_is_an_error(state):
    host = _host(state, FakeTorchLogic(installed=True), pip_install=lambda command: None)
    with pytest.raises(RuntimeError, match="psutil"):
        dependencies.ensure(host, print)


def test_panel_memory_round_trips_through_a_settings_store():
    class Settings(dict):
        def value(self, key):
            return self.get(key)

        def setValue(self, key, value):
            self[key] = value

    settings = Settings()
    memory = remembered.PanelMemory(settings)
    assert memory.output_folder() is None and memory.measured_speed("la", "cuda") is None
    memory.remember_output_folder("/home/me/ACTIONPlusPlus")
    memory.remember_speed("la", "cuda", 0.27)
    assert memory.output_folder() == "/home/me/ACTIONPlusPlus" and memory.measured_speed("la", "cuda") == 0.27
    assert memory.measured_speed("acdc", "cuda") is None
    settings[next(k for k in settings if "la" in k.lower() and k != "ACTIONPlusPlus/OutputFolder")] = "not a number"
    assert memory.measured_speed("la", "cuda") is None


def test_is_interactive_across_slicer_versions():
    def app(testing=False, no_main_window=False, options=True):
        opts = (lambda: types.SimpleNamespace(noMainWindow=no_main_window)) if options else (lambda: types.SimpleNamespace())
        return types.SimpleNamespace(testingEnabled=lambda: testing, commandOptions=opts)

    window = object()
    assert api_versions.is_interactive(app(), window)
    assert not api_versions.is_interactive(app(testing=True), window)
    assert not api_versions.is_interactive(app(no_main_window=True), window)
    assert api_versions.is_interactive(app(options=False), window)  # an older Slicer without the option
    assert not api_versions.is_interactive(app(), None)


def test_active_run_folder_and_device():
    run = active_run.ActiveRun(worker=None, job_path="/runs/run-1/job.json", kind="train", confidence=False)
    assert str(run.run_folder) == "/runs/run-1" and run.trained_device() == "cpu" and run.events == []
    run.tracker.handle({"event": "start", "device": "cuda:0"})
    assert run.trained_device() == "cuda"


def test_the_default_torch_check_never_imports_torch(monkeypatch):
    """Without a ``torch_found`` the check is the import spec (issue 34, item 1), never an import."""
    looked = []
    monkeypatch.setattr(install_plan, "torch_available", lambda *a: looked.append(True) or True)
    monkeypatch.setattr(install_plan, "missing_requirements", lambda *a, **k: [])
    assert dependencies.missing() == (False, []) and looked == [True]
    assert dependencies.InstallHost().torch_found() is True
