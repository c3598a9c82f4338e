"""Tests of the MAAS publisher against a local boot-resources API (tests/fakes/maas_server.py)."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import shutil
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imagebuilder.errors import ConfigError, MAASAuthError, MAASError
from imagebuilder.maas import publish
from imagebuilder.maas.api import CHUNK_SIZE, MAASClient, MAASHTTPError
from imagebuilder.progress import Event, Progress
from tests.fakes.maas_server import DEFAULT_API_KEY, Cut, FakeMAAS

MiB = 1 << 20
SECRET = DEFAULT_API_KEY.split(":")[2]


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeMAAS]:
    with FakeMAAS(tmp_path / "maas-store") as server:
        yield server
    shutil.rmtree(tmp_path / "maas-store")  # up to 300 MB; pytest keeps old tmp dirs


def make_image(path: Path, size: int, seed: int = 1) -> str:
    """A sparse-ish file: 64 KiB of random bytes at the start of every 4 MiB, holes between."""
    rnd = random.Random(seed)
    with path.open("wb") as f:
        f.truncate(size)
        for off in range(0, size, CHUNK_SIZE):
            f.seek(off)
            f.write(rnd.randbytes(min(64 * 1024, size - off)))
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK_SIZE):
            h.update(block)
    return h.hexdigest()


def write_manifest(image: Path, **fields: Any) -> None:
    image.with_name(image.name + ".manifest.json").write_text(json.dumps(fields))


def upload(fake: FakeMAAS, image: Path, events: list[Event] | None = None, **kw: Any) -> Any:
    args: dict[str, Any] = {
        "maas_url": fake.url,
        "api_key": DEFAULT_API_KEY,
        "name": "custom/test",
        "title": "Test image",
        "architecture": None,
        "base_image": None,
        "filetype": None,
        "progress": Progress(events.append) if events is not None else Progress(),
    }
    args.update(kw)
    return publish.upload_image(image, **args)


def newest_file(resource: dict[str, Any]) -> dict[str, Any]:
    sets = resource["sets"]
    (rfile,) = sets[max(sets)]["files"].values()
    assert isinstance(rfile, dict)
    return rfile


def puts(fake: FakeMAAS) -> list[Any]:
    return [r for r in fake.requests if r.method == "PUT"]


def test_upload_300mb_with_manifest(fake: FakeMAAS, tmp_path: Path) -> None:
    image = tmp_path / "jammy.tar.gz"
    size = 300 * 1000 * 1000 + 12345
    sha = make_image(image, size)
    write_manifest(
        image, sha256=sha, size=size, filetype="tgz", config={"arch": "amd64", "series": "jammy"}
    )
    events: list[Event] = []
    start = time.monotonic()
    res = upload(fake, image, events)
    seconds = time.monotonic() - start
    print(f"\nupload of {size / MiB:.0f} MiB: {seconds:.2f} s, {size / MiB / seconds:.0f} MiB/s")

    rfile = newest_file(res)
    assert (res["name"], res["architecture"], res["base_image"]) == (
        "test", "amd64/generic", "ubuntu/jammy",
    )  # fmt: skip
    assert (rfile["complete"], rfile["sha256"], rfile["size"]) == (True, sha, size)
    assert rfile["filetype"] == "root-tgz" and res["title"] == "Test image"
    assert fake.disk_size(sha) == size  # and the fake's own sha256 check passed
    sent = puts(fake)
    assert len(sent) == -(-size // CHUNK_SIZE)
    assert all(r.content_type == "application/octet-stream" for r in sent)
    assert all(r.content_length is not None and 0 < r.content_length <= CHUNK_SIZE for r in sent)
    assert [c.length for c in fake.chunks] == [r.content_length for r in sent]
    assert all(
        r.authorization.startswith("OAuth ") for r in fake.requests if "version" not in r.path
    )
    counters = [e.data["done"] for e in events if e.kind == "counter" and e.name == "upload"]
    assert counters[-1] == size and counters == sorted(counters)
    assert not any(e.kind == "counter" and e.name == "sha256" for e in events)  # manifest trusted


@pytest.mark.parametrize(
    ("version", "regions", "mode"),
    [
        ("3.6.0", 1, "mid-body"),
        ("3.6.0", 1, "after-append"),
        ("3.6.0", 2, "mid-body"),
        ("3.4.0", 1, "after-append"),
    ],
)
def test_cut_upload_resumes_without_resending(
    tmp_path: Path, version: str, regions: int, mode: str
) -> None:
    image = tmp_path / "disk.dd.gz"
    size = 40 * MiB + 777
    sha = make_image(image, size, seed=7)
    with FakeMAAS(tmp_path / "store", version=version, regions=regions) as fake:
        fake.cut = Cut(after_bytes=18 * MiB, mode=mode)
        with pytest.raises(MAASError) as info:
            upload(fake, image, architecture="amd64/generic")
        assert "interrupted" in info.value.message and "again" in (info.value.hint or "")
        held = sum(c.length for c in fake.chunks)
        assert held == (20 * MiB if mode == "after-append" else 16 * MiB)
        first_run_puts = len(puts(fake))
        body_bytes_before = fake.put_body_bytes

        res = upload(fake, image, architecture="amd64/generic")

        assert newest_file(res)["complete"] is True and fake.disk_size(sha) == size
        # Every byte was appended exactly once, in order: nothing finished was resent.
        offsets = [(c.offset, c.length) for c in fake.chunks]
        assert [o for o, _ in offsets] == [
            sum(n for _, n in offsets[:i]) for i in range(len(offsets))
        ]
        assert sum(n for _, n in offsets) == size
        assert fake.put_body_bytes - body_bytes_before == size - held
        assert [r.method for r in fake.requests].count("POST") == 1
        assert len(puts(fake)) - first_run_puts == -(-(size - held) // CHUNK_SIZE)


def test_complete_file_is_not_sent_again(fake: FakeMAAS, tmp_path: Path) -> None:
    image = tmp_path / "small.tar.xz"
    make_image(image, 5 * MiB + 3)
    upload(fake, image, architecture="amd64/generic")
    before = len(fake.requests)
    events: list[Event] = []
    res = upload(fake, image, events, architecture="amd64/generic")
    again = [r.method for r in fake.requests[before:]]
    assert again == ["GET", "GET"] and newest_file(res)["filetype"] == "root-txz"
    assert any("already has custom/test" in e.name for e in events if e.kind == "info")
    assert len(fake.uploaded()) == 1


def test_new_content_replaces_old_file(fake: FakeMAAS, tmp_path: Path) -> None:
    image = tmp_path / "img.tgz"
    make_image(image, 3 * MiB, seed=1)
    upload(fake, image, architecture="amd64/generic")
    sha2 = make_image(image, 3 * MiB, seed=2)
    res = upload(fake, image, architecture="amd64/generic")
    assert newest_file(res)["sha256"] == sha2 and newest_file(res)["complete"]
    assert sum(len(s["files"]) for s in res["sets"].values()) == 1  # keep_old=False


@pytest.mark.parametrize("version", ["3.6.0", "3.4.0"])
def test_same_content_under_another_name(tmp_path: Path, version: str) -> None:
    image = tmp_path / "img.tgz"
    sha = make_image(image, 6 * MiB)
    with FakeMAAS(tmp_path / "store", version=version) as fake:
        upload(fake, image, name="custom/one", architecture="amd64/generic")
        sent = len(puts(fake))
        if version == "3.6.0":  # a second file with that sha256 would wreck the first
            with pytest.raises(MAASError, match=r"already holds this exact file as one \(amd64"):
                upload(fake, image, name="custom/two", architecture="amd64/generic")
            assert [r.method for r in fake.requests].count("POST") == 1
        else:  # LargeFile: MAAS shares the finished content, nothing to send
            res = upload(fake, image, name="custom/two", architecture="amd64/generic")
            assert newest_file(res)["complete"] is True
        assert len(puts(fake)) == sent and fake.disk_size(sha) == 6 * MiB


@pytest.mark.parametrize("which", ["consumer", "token", "secret"])
def test_wrong_key_is_rejected(fake: FakeMAAS, tmp_path: Path, which: str) -> None:
    image = tmp_path / "img.tgz"
    make_image(image, MiB)
    ck, tk, ts = DEFAULT_API_KEY.split(":")
    bad = {
        "consumer": f"x{ck[1:]}:{tk}:{ts}",
        "token": f"{ck}:x{tk[1:]}:{ts}",
        "secret": f"{ck}:{tk}:wrongsecret",
    }[which]
    with pytest.raises(MAASAuthError) as info:
        upload(fake, image, api_key=bad, architecture="amd64/generic")
    assert info.value.message.startswith("MAAS rejected the API key")
    assert "maas apikey" in (info.value.hint or "") and info.value.exit_code == 1
    # The fake answers a wrong secret as piston does, with the real one in the body.
    text = "".join(traceback.format_exception(info.value)) + str(info.value.hint)
    assert SECRET not in text and "wrongsecret" not in text
    assert not puts(fake)


def test_key_never_in_logs_progress_or_errors(
    fake: FakeMAAS, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    image = tmp_path / "img.tar.gz"
    sha = make_image(image, 9 * MiB)
    events: list[Event] = []
    texts: list[str] = []
    res = upload(fake, image, events, architecture="amd64/generic")
    assert newest_file(res)["sha256"] == sha
    # A failing upload (a manifest sha256 that does not match) and a rejected key.
    write_manifest(image, sha256="0" * 64, size=9 * MiB, filetype="tgz")
    with pytest.raises(MAASError) as mismatch:
        upload(fake, image, events, name="custom/other", architecture="amd64/generic")
    assert "Saved content does not match given SHA256 value." in mismatch.value.message
    with pytest.raises(MAASAuthError) as rejected:
        upload(
            fake, image, events, api_key=DEFAULT_API_KEY[:-3] + "zzz", architecture="amd64/generic"
        )
    for exc in (mismatch.value, rejected.value):
        texts += [*traceback.format_exception(exc), str(exc.hint), exc.details, repr(exc)]
    texts += [r.getMessage() for r in caplog.records] + [repr(r.args) for r in caplog.records]
    texts += [json.dumps([e.kind, e.name, e.data]) for e in events]
    texts.append(repr(MAASClient(fake.url, DEFAULT_API_KEY)))
    assert any("PUT" in t for t in texts)  # the debug log did record the requests
    blob = "\n".join(texts)
    for secret in (DEFAULT_API_KEY, SECRET, DEFAULT_API_KEY[:-3] + "zzz"):
        assert secret not in blob


# name given -> stored by MAAS 3.6 (3.7 and older alike), by MAAS 3.8; or why refused.
NAME_RULES = [
    ("custom/x", "x", "custom/x"),
    ("x", "x", "x"),
    ("custom/jammy-web", "jammy-web", "custom/jammy-web"),
    ("ubuntu/jammy", "has no kernels available", None),
    ("ubuntu/my-image", "has no kernels available", None),
    ("centos/x", "a centos image, not a custom one", None),
    ("debian/x", "no operating system 'debian'", None),
    ("custom", "reserves 'custom'", None),
    ("custom/ubuntu", "reserves 'ubuntu'", None),
    ("ubuntu-core", "reserves 'ubuntu-core'", None),
    ("centos7", "reserves 'centos7'", None),
    ("custom/centos80", "reserves 'centos80'", None),
    ("custom/a/b", "MAAS takes NAME or OS/NAME", None),
    ("custom/", "MAAS takes NAME or OS/NAME", None),
    ("", "bad image name", None),
    ("custom/with space", "bad image name", None),
]


@pytest.mark.parametrize("name", ["ubuntu/jammy", "ubuntu/my-image"])
def test_ubuntu_name_refused_before_any_request(fake: FakeMAAS, tmp_path: Path, name: str) -> None:
    image = tmp_path / "img.tgz"
    make_image(image, MiB)
    with pytest.raises(ConfigError) as info:
        upload(fake, image, name=name)
    assert "has no kernels available" in info.value.message
    assert "custom/" in (info.value.hint or "")
    assert fake.requests == []


def test_bad_names_refused_before_any_request(fake: FakeMAAS, tmp_path: Path) -> None:
    image = tmp_path / "img.tgz"
    make_image(image, MiB)
    for name, _, new in NAME_RULES:
        if new is None:
            with pytest.raises(ConfigError):
                upload(fake, image, name=name)
    assert fake.requests == []


@pytest.mark.parametrize(("name", "old", "new"), NAME_RULES)
def test_maas_name_rules(name: str, old: str, new: str | None) -> None:
    if new is None:
        for version in ((3, 6, 0), (3, 8, 0)):
            with pytest.raises(ConfigError, match=re.escape(old)):
                publish.maas_name(name, version)
        return
    assert publish.maas_name(name, (3, 6, 0)) == publish.maas_name(name, (3, 7, 3)) == old
    assert publish.maas_name(name, (3, 8, 0)) == new
    assert publish.same_name(old, name) and publish.same_name(new, name)
    assert not publish.same_name(old + "2", name) and not publish.same_name(None, name)


# What the fake answers to POST name=...: the listed name, or MAAS's error text.
FAKE_RULES = [
    ("custom/x", "x", "custom/x"),
    ("x", "x", "x"),
    ("custom/noble", "noble is a reserved name", "custom/noble"),  # a cached release
    ("noble", "noble is a reserved name", "noble is a reserved name"),
    ("custom/ubuntu", "ubuntu is a reserved name", "custom/ubuntu"),
    ("custom", "custom is a reserved name", "custom is a reserved name"),
    ("ubuntu/jammy", "ubuntu/jammy is a reserved name", "ubuntu/jammy is a reserved name"),
    ("ubuntu/my-image", "ubuntu/my-image", "ubuntu/my-image"),  # taken; fails at deploy
    ("centos7", "centos7 is a reserved name", "centos7 is a reserved name"),
    ("custom/centos7", "centos7 is a reserved name", "custom/centos7"),
    ("onie/x", "Unsupport operating system onie", "onie/x"),
    ("debian/x", "Unsupport operating system debian", "Unsupport operating system debian"),
]


@pytest.mark.parametrize("version", ["3.6.0", "3.8.0"])
def test_fake_stores_names_as_maas(tmp_path: Path, version: str) -> None:
    """The fake against clean_name of MAAS 3.6 (strips custom/) and 3.8 (keeps it)."""
    kw: dict[str, Any] = {"architecture": "amd64/generic", "size": 10, "filetype": "tgz"}
    with (
        FakeMAAS(tmp_path / "store", version=version) as fake,
        MAASClient(fake.url, DEFAULT_API_KEY) as client,
    ):
        for name, old, new in FAKE_RULES:
            want = old if version == "3.6.0" else new
            try:
                res = client.create_resource(name=name, sha256=f"{len(name):064x}", **kw)
            except MAASError as exc:
                assert want in exc.message, (name, exc.message)
                continue
            assert (res["name"], client.get(res["id"])["name"]) == (want, want), name
            assert want in [r["name"] for r in client.list_resources("uploaded")]
        # custom/x and x are one resource up to 3.7 (a POST reuses it), two on 3.8.
        ids = {
            r["id"] for r in client.list_resources("uploaded") if publish.same_name(r["name"], "x")
        }
        assert len(ids) == (1 if version == "3.6.0" else 2)


@pytest.mark.parametrize(
    ("version", "kill"),
    [("3.6.0", "server"), ("3.6.0", "client"), ("3.8.0", "client"), ("3.4.0", "server")],
)
def test_upload_killed_at_40_percent_resumes(tmp_path: Path, version: str, kill: str) -> None:
    """Killed at ~40 %, the same command continues at MAAS's byte and ends complete."""
    image = tmp_path / "web.dd.xz"
    size = 30 * MiB + 4321
    sha = make_image(image, size, seed=11)
    stored = "web" if version < "3.8" else "custom/web"
    kill_at = 12 * MiB  # 40 % of the file, on a chunk boundary

    def ctrl_c(event: Event) -> None:
        if event.kind == "counter" and event.name == "upload" and event.data["done"] >= kill_at:
            raise KeyboardInterrupt

    with FakeMAAS(tmp_path / "store", version=version) as fake:
        if kill == "server":
            fake.cut = Cut(after_bytes=kill_at)
        with pytest.raises((MAASError, KeyboardInterrupt)):
            publish.upload_image(
                image, maas_url=fake.url, api_key=DEFAULT_API_KEY, name="custom/web",
                title=None, architecture="amd64/generic", base_image=None, filetype=None,
                progress=Progress(ctrl_c) if kill == "client" else Progress(),
            )  # fmt: skip
        held = sum(c.length for c in fake.chunks)
        assert held == kill_at and 0.39 < held / size < 0.41
        (partial,) = fake.uploaded()
        assert partial["name"] == stored and newest_file(partial)["complete"] is False
        body_before = fake.put_body_bytes
        events: list[Event] = []

        res = upload(fake, image, events, name="custom/web", architecture="amd64/generic")

        assert any(f"resuming custom/web at byte {held} " in e.name for e in events)
        assert fake.put_body_bytes - body_before == size - held  # nothing re-sent
        assert [r.method for r in fake.requests].count("POST") == 1
        (only,) = fake.uploaded()
        assert only["id"] == res["id"] and res["name"] == stored
        assert [len(s["files"]) for s in only["sets"].values()] == [1]
        rfile = newest_file(only)
        assert (rfile["complete"], rfile["sha256"], rfile["size"]) == (True, sha, size)
        stored_file = fake.store / rfile["filename_on_disk"]
        assert hashlib.sha256(stored_file.read_bytes()).hexdigest() == sha
        kw: dict[str, Any] = {"maas_url": fake.url, "api_key": DEFAULT_API_KEY}
        assert [r["name"] for r in publish.list_images(**kw)] == [stored]
        assert [r["id"] for r in publish.delete_image(**kw, name="custom/web")] == [res["id"]]
        assert fake.uploaded() == [] and not stored_file.exists()


def test_unknown_architecture(fake: FakeMAAS, tmp_path: Path) -> None:
    image = tmp_path / "img.tgz"
    make_image(image, MiB)
    write_manifest(image, config={"arch": "arm64", "series": "noble"})
    with pytest.raises(MAASError) as info:
        upload(fake, image)
    assert "arm64/generic" in info.value.message and "amd64/generic" in info.value.message
    assert "synced" in (info.value.hint or "")
    assert not puts(fake)


def test_defaults_from_manifest_and_name(fake: FakeMAAS, tmp_path: Path) -> None:
    deb = tmp_path / "bookworm.tar.gz"
    make_image(deb, MiB, seed=3)
    write_manifest(deb, config={"arch": "amd64", "series": "bookworm"})
    res = upload(fake, deb, name="custom/deb")
    assert res["base_image"] == "ubuntu/jammy" and res["architecture"] == "amd64/generic"
    assert newest_file(res)["filetype"] == "root-tgz"

    noble = tmp_path / "noble.img.xz"
    make_image(noble, MiB, seed=4)
    write_manifest(noble, config={"arch": "amd64", "series": "noble"}, filetype="ddxz")
    res = upload(fake, noble, name="custom/noble-web")
    assert res["base_image"] == "ubuntu/noble" and newest_file(res)["filetype"] == "root-dd.xz"

    odd = tmp_path / "image.bin"
    make_image(odd, MiB, seed=5)
    with pytest.raises(ConfigError, match=r"filetype of image\.bin") as info:
        upload(fake, odd, architecture="amd64/generic")
    assert "--filetype" in (info.value.hint or "")


def test_maas_validation_texts(fake: FakeMAAS) -> None:
    with MAASClient(fake.url, DEFAULT_API_KEY) as client:
        kw: dict[str, Any] = {"architecture": "amd64/generic", "size": 10, "filetype": "tgz"}
        with pytest.raises(MAASError, match="Ensure this value has at least 64 characters"):
            client.create_resource(name="custom/a", sha256="ab", **kw)
        with pytest.raises(MAASError, match="custom is a reserved name"):
            client.create_resource(name="custom", sha256="a" * 64, **kw)
        with pytest.raises(MAASError, match="valid non-custom OS type base image"):
            client.create_resource(name="custom/a", sha256="a" * 64, base_image="debian/x", **kw)
        with pytest.raises(MAASError, match="Unsupport operating system debian"):
            client.create_resource(name="debian/a", sha256="a" * 64, **kw)
        res = client.create_resource(name="custom/a", sha256="a" * 64, **kw)
        assert res["base_image"] == "ubuntu/noble"  # MAAS's commissioning default
        uri = newest_file(res)["upload_uri"]
        assert uri == f"/MAAS/api/2.0/boot-resources/{res['id']}/upload/{res['id'] + 1}/"
        with pytest.raises(MAASHTTPError) as info:
            client._request("PUT", uri, data=b"")
        assert info.value.text == "Missing data."
        with pytest.raises(MAASError, match=r"Too much data received\."):
            client.upload_file(uri, _bytes_file(fake.store.parent / "eleven", 11), Progress())


def _bytes_file(path: Path, n: int) -> Path:
    path.write_bytes(b"x" * n)
    return path


def test_non_admin_key(tmp_path: Path) -> None:
    image = tmp_path / "img.tgz"
    make_image(image, MiB)
    with FakeMAAS(tmp_path / "store", admin=False) as fake, pytest.raises(MAASAuthError) as info:
        upload(fake, image, architecture="amd64/generic")
    assert info.value.message.startswith("MAAS rejected the API key")
    assert "administrator" in (info.value.hint or "")


def test_connection_refused_names_url(tmp_path: Path) -> None:
    image = tmp_path / "img.tgz"
    make_image(image, MiB)
    with FakeMAAS(tmp_path / "store") as fake:
        url = fake.url  # the port is closed once the server stops
    with pytest.raises(MAASError) as info:
        publish.upload_image(
            image, maas_url=url, api_key=DEFAULT_API_KEY, name="custom/x", title=None,
            architecture="amd64/generic", base_image=None, filetype=None, progress=Progress(),
        )  # fmt: skip
    assert url in info.value.message and "connection refused" in info.value.message


def test_list_and_delete(fake: FakeMAAS, tmp_path: Path) -> None:
    image = tmp_path / "img.tgz"
    for seed, name in enumerate(["custom/one", "custom/two", "three"]):
        make_image(image, MiB, seed=seed)
        upload(fake, image, name=name, architecture="amd64/generic")
    listed = publish.list_images(maas_url=fake.url, api_key=DEFAULT_API_KEY)
    assert [r["name"] for r in listed] == ["one", "three", "two"]  # as MAAS lists them
    assert {r["type"] for r in listed} == {"Uploaded"}  # synced ubuntu/* are not listed
    kw: dict[str, Any] = {"maas_url": fake.url, "api_key": DEFAULT_API_KEY}
    gone = publish.delete_image(**kw, name="custom/one")
    assert [r["name"] for r in gone] == ["one"]
    assert [r["name"] for r in publish.delete_image(**kw, name="two")] == ["two"]
    assert [r["name"] for r in publish.delete_image(**kw, name="custom/three")] == ["three"]
    assert fake.uploaded() == []
    for name in ("custom/one", "one"):
        with pytest.raises(MAASError, match=f"no uploaded image named {name}$"):
            publish.delete_image(**kw, name=name)


def test_find_image_either_spelling(fake: FakeMAAS, tmp_path: Path) -> None:
    image = tmp_path / "img.tgz"
    make_image(image, MiB)
    upload(fake, image, name="custom/two", architecture="amd64/generic")
    with MAASClient(fake.url, DEFAULT_API_KEY) as client:
        for name in ("custom/two", "two"):
            found = publish.find_image(client, name, "amd64/generic")
            assert found is not None and newest_file(found)["complete"]
        assert publish.find_image(client, "two", "arm64/generic") is None
        assert publish.find_image(client, "custom/one") is None


def test_read_api_key(tmp_path: Path) -> None:
    keyfile = tmp_path / "key"
    keyfile.write_text(DEFAULT_API_KEY + "\n")
    env = {"MAAS_API_KEY": "a:b:c"}
    assert publish.read_api_key(keyfile, environ=env, prompt=None) == DEFAULT_API_KEY
    assert publish.read_api_key(None, environ=env, prompt=None) == "a:b:c"
    assert publish.read_api_key(None, environ={}, prompt=lambda: DEFAULT_API_KEY) == DEFAULT_API_KEY
    with pytest.raises(ConfigError, match="no MAAS API key"):
        publish.read_api_key(None, environ={}, prompt=None)
    with pytest.raises(ConfigError) as info:
        publish.read_api_key(None, environ={"MAAS_API_KEY": "only:two-secretpart"}, prompt=None)
    assert "secretpart" not in str(info.value) and "MAAS_API_KEY" in str(info.value)
    with pytest.raises(ConfigError, match="cannot read the API key file"):
        publish.read_api_key(tmp_path / "missing", environ={}, prompt=None)


def test_cli_upload_list_delete(
    fake: FakeMAAS,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The CLI end of it: key from the environment, exit codes, nothing of the key printed."""
    from imagebuilder import cli

    image = tmp_path / "custom-cloudimg.tar.gz"
    make_image(image, 6 * 2**20)
    monkeypatch.setenv("MAAS_API_KEY", DEFAULT_API_KEY)
    args = ["--maas-url", fake.url]
    up = ["upload", str(image), "--name", "custom/cli-test", "--architecture", "amd64/generic"]
    assert cli.main([*up, *args]) == 0
    assert cli.main(["maas", "list", *args]) == 0
    assert cli.main(["maas", "delete", "custom/cli-test", *args]) == 0
    assert cli.main(["maas", "delete", "custom/cli-test", *args]) == 1
    assert cli.main([*up, *args]) == 0
    assert cli.main(["maas", "delete", "cli-test", *args]) == 0
    monkeypatch.setenv("MAAS_API_KEY", "a:b:c")
    assert cli.main(["maas", "list", *args]) == 1
    out = capsys.readouterr()
    assert "uploaded cli-test (amd64/generic)" in out.out  # MAAS's stored name
    assert out.out.count("deleted cli-test (amd64/generic)") == 2
    assert re.search(r"^\s*\d+  cli-test  amd64/generic", out.out, re.M)  # maas list
    assert "MAAS rejected the API key" in out.err
    assert "no uploaded image named custom/cli-test" in out.err
    assert DEFAULT_API_KEY.split(":")[2] not in out.out + out.err
