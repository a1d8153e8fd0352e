"""The one resolver of settings from the environment, for from_env and the command line."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from plainid_async import ConfigurationError
from plainid_async._secret import Secret
from plainid_async._settings import Flags, Settings, read_secret_file, strip_one_newline

if TYPE_CHECKING:
    from pathlib import Path

FULL = {
    "PLAINID_CLIENT_ID": "env-id",
    "PLAINID_CLIENT_SECRET": "env-secret",
    "PLAINID_REGION": "us1",
}
FLAGS = Flags(client_id="--id", secret="--secret-file PATH", location="--region or --base-url")


def test_the_environment_gives_every_setting_with_the_secret_wrapped() -> None:
    settings = Settings.from_environ(FULL)
    assert settings.client_id == "env-id"
    assert isinstance(settings.client_secret, Secret)
    assert settings.client_secret.reveal() == "env-secret"
    assert (settings.region, settings.base_url) == ("us1", None)
    assert "env-secret" not in repr(settings)


def test_without_a_mapping_it_reads_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in FULL.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("PLAINID_BASE_URL", raising=False)
    monkeypatch.delenv("PLAINID_CLIENT_SECRET_FILE", raising=False)
    assert Settings.from_environ().client_id == "env-id"


def test_every_missing_setting_is_named_in_one_message() -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_environ({"PLAINID_CLIENT_ID": " ", "PLAINID_REGION": ""})
    assert str(info.value) == (
        "missing client id (PLAINID_CLIENT_ID); "
        "client secret (PLAINID_CLIENT_SECRET or PLAINID_CLIENT_SECRET_FILE); "
        "region (PLAINID_REGION or PLAINID_BASE_URL)"
    )


def test_the_missing_message_names_the_flags_when_there_are_flags() -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_environ({}, flags=FLAGS)
    assert str(info.value) == (
        "missing client id (PLAINID_CLIENT_ID or --id); "
        "client secret (PLAINID_CLIENT_SECRET or PLAINID_CLIENT_SECRET_FILE, or --secret-file "
        "PATH); region (PLAINID_REGION or PLAINID_BASE_URL, or --region or --base-url)"
    )


def test_only_what_is_missing_is_named() -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_environ({"PLAINID_CLIENT_SECRET": "s"})
    assert "client secret" not in str(info.value)
    assert "client id" in str(info.value)
    assert "region" in str(info.value)


def test_overrides_win_over_the_environment() -> None:
    settings = Settings.from_environ(
        {**FULL, "PLAINID_BASE_URL": "https://also.example.com"},
        client_id="flag-id",
        client_secret=Secret("flag-secret"),
        base_url="https://flag.example.com",
    )
    assert settings.client_id == "flag-id"
    assert settings.client_secret.reveal() == "flag-secret"
    # One flag for the location replaces both variables: two set is then no conflict.
    assert (settings.region, settings.base_url) == (None, "https://flag.example.com")


def test_a_secret_given_otherwise_leaves_the_secret_variables_unread(tmp_path: Path) -> None:
    env = {**FULL, "PLAINID_CLIENT_SECRET_FILE": str(tmp_path / "missing")}
    settings = Settings.from_environ(env, client_secret=Secret("given"))
    assert settings.client_secret.reveal() == "given"


def test_both_secret_variables_set_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("file-secret\n")
    env = {**FULL, "PLAINID_CLIENT_SECRET_FILE": str(tmp_path / "secret")}
    with pytest.raises(ConfigurationError, match="set only one of PLAINID_CLIENT_SECRET and"):
        Settings.from_environ(env)


def test_the_secret_file_variable_is_read_without_one_trailing_newline(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("file-secret\r\n")
    env = {"PLAINID_CLIENT_ID": "i", "PLAINID_REGION": "us1"}
    env["PLAINID_CLIENT_SECRET_FILE"] = str(tmp_path / "secret")
    assert Settings.from_environ(env).client_secret.reveal() == "file-secret"


@pytest.mark.parametrize(
    ("flags", "hint"), [(None, ""), (FLAGS, ", or use --region or --base-url")]
)
def test_both_location_variables_set_is_refused(flags: Flags | None, hint: str) -> None:
    env = {**FULL, "PLAINID_BASE_URL": "https://x.example.com"}
    with pytest.raises(ConfigurationError) as info:
        Settings.from_environ(env, flags=flags)
    assert str(info.value) == f"both PLAINID_REGION and PLAINID_BASE_URL are set: unset one{hint}"


def test_an_unreadable_secret_file_is_named_with_its_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"cannot read --flag .*missing'"):
        read_secret_file(tmp_path / "missing", source="--flag")
    (tmp_path / "blank").write_text(" \n")
    with pytest.raises(ConfigurationError, match=r"--flag .*blank' is empty"):
        read_secret_file(tmp_path / "blank", source="--flag")


@pytest.mark.parametrize(
    ("text", "kept"), [("a\n", "a"), ("a\r\n", "a"), ("a\n\n", "a\n"), ("a\r", "a\r"), ("a", "a")]
)
def test_one_trailing_newline_is_dropped(text: str, kept: str) -> None:
    assert strip_one_newline(text) == kept


def test_a_secret_read_from_its_file_variable_remembers_the_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("file-secret\n")
    environ = {
        "PLAINID_CLIENT_ID": "c",
        "PLAINID_CLIENT_SECRET_FILE": str(secret_file),
        "PLAINID_REGION": "us1",
    }
    settings = Settings.from_environ(environ)
    assert settings.client_secret.reveal() == "file-secret"
    assert settings.client_secret_file == str(secret_file)
    # A secret given another way (the command line's) is not the file's.
    flagged = Settings.from_environ(environ, client_secret=Secret("flag-secret"))
    assert flagged.client_secret_file is None
    plain = {**environ, "PLAINID_CLIENT_SECRET": "env-secret"}
    del plain["PLAINID_CLIENT_SECRET_FILE"]
    assert Settings.from_environ(plain).client_secret_file is None
