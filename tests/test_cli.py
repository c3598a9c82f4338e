"""The command line: exit codes, messages, help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from imagebuilder import cli


def test_unknown_series_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["nosuchseries"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imagebuilder: error: unknown series 'nosuchseries'")
    assert "jammy" in err and "bookworm" in err


def test_module_entry_point() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "imagebuilder", "nosuchseries"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "known series" in proc.stderr


def test_bad_option_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["jammy", "--no-such-option"]) == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_help_documents_every_option_with_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    from imagebuilder.config.tree import OPTIONS

    for opt in OPTIONS:
        assert f"--{opt.name}" in out
    assert out.count("(default:") >= len(OPTIONS)


def test_releases_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["releases"]) == 0
    out = capsys.readouterr().out
    assert "jammy" in out and "22.04" in out and "bookworm" in out and "amd64" in out


def test_print_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bookworm", "--base", "bootstrap", "--memory", "3000", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert 'series = "bookworm"' in out and "memory = 3000" in out and 'base = "bootstrap"' in out


def test_upload_refuses_without_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["jammy", "--upload"]) == 2
    assert "--name" in capsys.readouterr().err


def _tgz(path: Path, files: dict[str, bytes]) -> Path:
    import gzip
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(f"./{name}")
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(buf.getvalue(), mtime=0))
    return path


def test_diff_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _tgz(tmp_path / "a.tar.gz", {"etc/x": b"1", "etc/y": b"2"})
    b = _tgz(tmp_path / "b.tar.gz", {"etc/x": b"1", "etc/y": b"2"})
    c = _tgz(tmp_path / "c.tar.gz", {"etc/x": b"changed", "etc/z": b"3"})
    assert cli.main(["diff", str(a), str(b)]) == 0
    assert capsys.readouterr().out == ""
    assert cli.main(["diff", str(a), str(c)]) == 1
    out = capsys.readouterr().out
    assert "etc/x" in out and "etc/y" in out and "etc/z" in out
    assert cli.main(["diff", str(a), str(tmp_path / "missing")]) == 2


def test_locked_without_lock_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lock = tmp_path / "none.lock"
    assert cli.main(["bookworm", "--base", "bootstrap", "--locked", "--lock", str(lock)]) == 2
    assert "no lock file" in capsys.readouterr().err


def test_a_reader_that_goes_away_gets_no_traceback() -> None:
    """``imagebuilder releases | head -0``: the pipe closes before we write."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "imagebuilder", "releases"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err, err
