"""The release catalogue: names, URLs, kernels, status."""

from __future__ import annotations

import datetime as dt

import pytest

from imagebuilder.errors import UnknownSeriesError
from imagebuilder.families import catalogue


@pytest.mark.parametrize(
    "name", ["focal", "jammy", "noble", "resolute", "bullseye", "bookworm", "trixie"]
)
def test_known(name: str) -> None:
    assert catalogue.get(name).codename == name


def test_unknown() -> None:
    with pytest.raises(UnknownSeriesError):
        catalogue.get("warty")


def test_ubuntu_urls() -> None:
    r = catalogue.get("jammy")
    assert r.image_dir_url() + "/" + r.image_filename("amd64") == (
        "https://cloud-images.ubuntu.com/jammy/current/jammy-server-cloudimg-amd64.img"
    )
    assert r.image_dir_url(released=True, serial="release-20240507") == (
        "https://cloud-images.ubuntu.com/releases/jammy/release-20240507"
    )
    assert r.image_filename("arm64", released=True) == "ubuntu-22.04-server-cloudimg-arm64.img"
    assert r.image_dir_url(mirror="http://127.0.0.1:8000/") == "http://127.0.0.1:8000/jammy/current"
    assert r.checksum_file == "SHA256SUMS" and r.signature_file == "SHA256SUMS.gpg"


def test_debian_urls_and_kernel() -> None:
    r = catalogue.get("bookworm")
    assert r.image_filename("amd64") == "debian-12-genericcloud-amd64.qcow2"
    assert r.checksum_file == "SHA512SUMS"
    assert r.kernel_package("arm64") == "linux-image-arm64"
    assert catalogue.get("noble").kernel_package("amd64") == "linux-generic"


def test_status_dates() -> None:
    r = catalogue.get("bookworm")
    assert r.status(dt.date(2024, 1, 1)) == "supported"
    assert "security" in r.status(dt.date(2027, 1, 1))
    assert r.status(dt.date(2030, 1, 1)) == "end of life"
    assert catalogue.get("resolute").status(dt.date(2026, 1, 1)) == "development"
