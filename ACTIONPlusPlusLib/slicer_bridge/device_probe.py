"""What torch sees, asked of a short-lived child process so that torch is never imported into Slicer
(no slicer, no Qt)."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

from .child_process import child_environment, find_python, popen_options


class DeviceProbe:
    """Asks a short-lived child process what torch sees, so that torch is never imported into Slicer.

    ``start()`` returns at once; :meth:`poll` returns None while the child runs, then its result: the
    dict of ``device.describe_devices()`` or ``{"error": message}``.  :meth:`wait` blocks (tests, batch).
    """

    CODE = "import json, sys; from ACTIONPlusPlusLib.device import describe_devices; print(json.dumps(describe_devices()))"

    def __init__(self, python: str | None = None, timeout: float = 120.0) -> None:
        self.python = python or find_python()
        self.timeout = timeout
        self._process: subprocess.Popen[str] | None = None
        self._start_time = 0.0
        self.result: dict[str, Any] | None = None

    @property
    def command(self) -> list[str]:
        return [self.python, "-c", self.CODE]

    def start(self) -> "DeviceProbe":
        self._start_time = time.monotonic()
        try:
            self._process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, text=True, env=child_environment(),
                                             **popen_options())
        except OSError as exc:
            self.result = {"error": f"cannot start {self.python}: {exc}"}
        return self

    @property
    def running(self) -> bool:
        return self._process is not None and self.result is None

    def poll(self) -> dict[str, Any] | None:
        if self.result is not None or self._process is None:
            return self.result
        if self._process.poll() is None:
            if time.monotonic() - self._start_time > self.timeout:
                self._process.kill()
                self._process.communicate()
                self.result = {"error": f"the device query did not answer within {self.timeout:.0f} s"}
            return self.result
        out, err = self._process.communicate()
        self.result = self._parse(self._process.returncode, out, err)
        return self.result

    @staticmethod
    def _parse(code: int, out: str, err: str) -> dict[str, Any]:
        for line in reversed((out or "").splitlines()):
            if line.strip().startswith("{"):
                try:
                    value = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(value, dict):
                    return value
        tail = " ".join((err or "").strip().splitlines()[-3:])
        return {"error": f"the device query failed (exit code {code}){': ' + tail if tail else ''}"}

    def wait(self) -> dict[str, Any]:
        while self.poll() is None:
            time.sleep(0.05)
        return self.result  # type: ignore[return-value]
