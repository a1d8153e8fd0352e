"""SecretFile: a secret file re-read when it changes (stat, rate-limited) and on demand."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from deployments._kubelet import SecretVolume

from plainid_async import ConfigurationError
from plainid_async._secret import CHECK_INTERVAL, SecretFile

if TYPE_CHECKING:
    from pathlib import Path

OLD = "old-secret-0123456789"
NEW = "new-secret-9876543210"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_reads_the_secret_without_its_trailing_newline(tmp_path: Path) -> None:
    volume = SecretVolume(tmp_path / "volume", OLD)
    source = SecretFile(volume.path, source="client_secret_file")
    assert source.secret.reveal() == OLD
    assert OLD not in repr(source)
    assert str(volume.path) in repr(source)


def test_a_missing_or_empty_file_is_a_configuration_error_naming_the_source(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigurationError, match=r"client_secret_file .*missing"):
        SecretFile(tmp_path / "missing", source="client_secret_file")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigurationError, match=r"client_secret_file .* is empty"):
        SecretFile(tmp_path / "empty", source="client_secret_file")


def test_poll_sees_a_kubelet_data_swap_once_the_interval_passed(tmp_path: Path) -> None:
    clock = Clock()
    volume = SecretVolume(tmp_path / "volume", OLD)
    source = SecretFile(volume.path, source="client_secret_file", clock=clock)
    volume.update(NEW)
    assert source.poll() is None  # checked at most every CHECK_INTERVAL seconds
    clock.now += CHECK_INTERVAL
    new = source.poll()
    assert new is not None
    assert new.reveal() == NEW
    assert source.secret.reveal() == NEW
    clock.now += CHECK_INTERVAL
    assert source.poll() is None  # nothing changed since


def test_poll_stats_at_most_once_per_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    volume = SecretVolume(tmp_path / "volume", OLD)
    source = SecretFile(volume.path, source="client_secret_file", clock=clock)
    stats: list[str] = []
    import plainid_async._secret as module  # noqa: PLC0415

    real = module._stamp

    def counted(path: str) -> tuple[int, int, int, int] | None:
        stats.append(path)
        return real(path)

    monkeypatch.setattr(module, "_stamp", counted)
    for _ in range(100):
        source.poll()
    assert stats == []
    clock.now += CHECK_INTERVAL
    for _ in range(100):
        source.poll()
    assert len(stats) == 1


def test_reload_reads_at_once_and_says_whether_the_secret_changed(tmp_path: Path) -> None:
    volume = SecretVolume(tmp_path / "volume", OLD)
    source = SecretFile(volume.path, source="client_secret_file", clock=Clock())
    assert source.reload() is None  # the same secret
    volume.update(NEW)
    new = source.reload()
    assert new is not None
    assert new.reveal() == NEW


def test_a_file_missing_or_emptied_mid_swap_keeps_the_last_good_secret(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(OLD)
    clock = Clock()
    source = SecretFile(path, source="client_secret_file", clock=clock)
    path.unlink()
    assert source.reload() is None
    path.write_text("")
    clock.now += CHECK_INTERVAL
    assert source.poll() is None
    assert source.secret.reveal() == OLD
    path.write_text(NEW + "\n")
    new = source.reload()
    assert new is not None
    assert new.reveal() == NEW


@pytest.mark.parametrize("path", [None, 3, b"/run/secret", ""])
def test_a_path_that_is_not_one_is_a_configuration_error_naming_the_source(path: object) -> None:
    with pytest.raises(ConfigurationError, match="client_secret_file must be a file path"):
        SecretFile(path, source="client_secret_file")  # type: ignore[arg-type]
