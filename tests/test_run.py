"""The subprocess helper: errors, not-found hints, helper processes cleaned up."""

from __future__ import annotations

import io
import json
import os
import signal

import pytest

from imagebuilder import run
from imagebuilder.errors import CommandError, ToolNotFoundError, host_package_hint
from imagebuilder.progress import JSONRenderer, PlainRenderer, Progress


def test_run_captures_and_raises_with_stderr_tail() -> None:
    assert run.run(["echo", "hi"]).stdout == b"hi\n"
    with pytest.raises(CommandError) as ei:
        run.run(["sh", "-c", "echo first >&2; echo 'the real reason' >&2; exit 3"])
    assert ei.value.returncode == 3
    assert "the real reason" in ei.value.message
    assert ei.value.argv[0].endswith("sh")


def test_missing_tool_names_package() -> None:
    with pytest.raises(ToolNotFoundError) as ei:
        run.run(["definitely-not-a-tool-xyz"])
    assert "not found" in ei.value.message
    assert ei.value.hint and "install the host package" in ei.value.hint
    run.PACKAGES["definitely-not-nbdkit"] = "nbdkit"
    with pytest.raises(ToolNotFoundError) as ei2:
        run.which("definitely-not-nbdkit")
    assert ei2.value.hint == host_package_hint("nbdkit")
    assert ei2.value.hint.startswith("install the host package nbdkit ")


def test_child_env_is_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_SECRET", "x")
    env = run.child_env({"EXTRA": "1"})
    assert "SOME_SECRET" not in env and env["EXTRA"] == "1" and env["LC_ALL"] == "C.UTF-8"


def test_spawn_stops_process_on_exit() -> None:
    with run.spawn(["sleep", "60"]) as proc:
        pid = proc.pid
        assert proc.poll() is None
    assert proc.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_spawn_stops_process_on_error() -> None:
    with pytest.raises(RuntimeError), run.spawn(["sleep", "60"]) as proc:
        raise RuntimeError("boom")
    assert proc.returncode == -signal.SIGTERM


def test_progress_renderers() -> None:
    buf, jbuf = io.StringIO(), io.StringIO()
    p = Progress(PlainRenderer(buf), JSONRenderer(jbuf))
    with p.stage("export", "tgz"):
        p.counter("write", 50, 100)
        p.warning("KVM hangs; using TCG", once="kvm")
        p.warning("KVM hangs; using TCG", once="kvm")
    text = buf.getvalue()
    assert "==> export: tgz" in text and "<== export done" in text
    assert text.count("WARNING") == 1
    events = [json.loads(line) for line in jbuf.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["stage-start", "counter", "warning", "stage-end"]
    assert "export" in p.timings


def test_failed_stage_is_reported() -> None:
    buf = io.StringIO()
    p = Progress(PlainRenderer(buf))
    with pytest.raises(ValueError), p.stage("vm"):
        raise ValueError
    assert "vm FAILED" in buf.getvalue()
