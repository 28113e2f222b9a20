"""MINTFAX_API_KEY_FILE: read from disk, rotated without a restart, never shown."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from outbox.errors import ConfigurationError
from outbox.settings import Settings


def test_a_rotated_key_file_is_picked_up_without_a_restart(tmp_path: Path) -> None:
    key_file = tmp_path / "mintfax.key"
    key_file.write_text("fx_live_first-key\n")
    settings = Settings.from_env({"MINTFAX_API_KEY_FILE": str(key_file)})
    assert settings.api_key().get_secret_value() == "fx_live_first-key"
    assert settings.api_key().get_secret_value() == "fx_live_first-key"  # cached read

    # A secrets manager writes the new key beside the old one and renames it into place.
    replacement = tmp_path / "mintfax.key.new"
    replacement.write_text("fx_live_second-key")
    os.replace(replacement, key_file)
    assert settings.api_key().get_secret_value() == "fx_live_second-key"

    # Rewritten in place (same inode): seen too, the file's mtime and size changed.
    key_file.write_text("fx_live_the-third-key")
    assert settings.api_key().get_secret_value() == "fx_live_the-third-key"
    assert "third" not in repr(settings.api_key()) and "third" not in repr(settings)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "cannot be read"),
        ("  \n", "is empty"),
        # Whitespace around the key is a file's ending, not the key; inside, the client could
        # not send it (issue 8, item 2): refused naming the variable, never quoting the key.
        ("fx_live_one two\n", "holds whitespace or control characters"),
        ("fx_live_one\ttwo", "holds whitespace or control characters"),
    ],
)
def test_a_missing_or_empty_key_file_is_a_clear_configuration_error(
    tmp_path: Path, content: str | None, reason: str
) -> None:
    key_file = tmp_path / "mintfax.key"
    if content is not None:
        key_file.write_text(content)
    settings = Settings.from_env({"MINTFAX_API_KEY_FILE": str(key_file)})
    with pytest.raises(ConfigurationError) as caught:
        settings.api_key()
    assert str(caught.value).startswith(f"MINTFAX_API_KEY_FILE {reason}")
    assert "fx_live" not in str(caught.value)


def test_a_key_file_readable_by_others_is_warned_about_once_per_mode(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "fx_live_exposed-key-4711"
    key_file = tmp_path / "mintfax.key"
    key_file.write_text(secret)
    key_file.chmod(0o644)
    settings = Settings.from_env({"MINTFAX_API_KEY_FILE": str(key_file)})
    with caplog.at_level(logging.DEBUG):
        for _ in range(3):  # read before every fax: warned once, not three times
            assert settings.api_key().get_secret_value() == secret
        key_file.chmod(0o640)  # still readable by the group: a new mode, one more warning
        settings.api_key()
        key_file.chmod(0o600)  # fixed: quiet
        settings.api_key()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage().split(" is ")[0] for r in warnings] == [
        f"MINTFAX_API_KEY_FILE {key_file}"
    ] * 2
    assert "0o644" in warnings[0].getMessage() and "0o640" in warnings[1].getMessage()
    for record in caplog.records:
        assert secret not in record.getMessage() and secret not in repr(record.__dict__)


def test_a_key_file_only_its_owner_can_read_is_not_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key_file = tmp_path / "mintfax.key"
    key_file.write_text("fx_live_private-key")
    key_file.chmod(0o600)
    with caplog.at_level(logging.DEBUG):
        Settings.from_env({"MINTFAX_API_KEY_FILE": str(key_file)}).api_key()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


# --- MINTFAX_WEBHOOK_SECRET_FILE: the receiver's signing secrets from a file -------------------


def test_a_rotated_webhook_secret_file_is_picked_up_without_a_restart(tmp_path: Path) -> None:
    secret_file = tmp_path / "webhook-secret"
    secret_file.write_text("whsec_old\n")
    secret_file.chmod(0o600)
    settings = Settings.from_env({"MINTFAX_WEBHOOK_SECRET_FILE": str(secret_file)})

    def values() -> list[str]:
        return [s.get_secret_value() for s in settings.webhook_secrets()]

    assert values() == ["whsec_old"]
    secret_file.write_text("whsec_new, whsec_old\n")  # the overlap, as in the variable
    assert values() == ["whsec_new", "whsec_old"]
    replacement = tmp_path / "webhook-secret.new"
    replacement.write_text("whsec_new")
    os.replace(replacement, secret_file)  # a secrets manager's rename into place
    assert values() == ["whsec_new"]
    assert "whsec_new" not in repr(settings)


def test_a_webhook_secret_file_that_cannot_be_read_names_the_variable(tmp_path: Path) -> None:
    settings = Settings.from_env({"MINTFAX_WEBHOOK_SECRET_FILE": str(tmp_path / "absent")})
    with pytest.raises(ConfigurationError) as caught:
        settings.webhook_secrets()
    assert str(caught.value).startswith("MINTFAX_WEBHOOK_SECRET_FILE cannot be read")


def test_a_webhook_secret_in_the_variable_and_a_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env(
            {"MINTFAX_WEBHOOK_SECRET": "whsec_inline-4711", "MINTFAX_WEBHOOK_SECRET_FILE": "/x"}
        )
    assert "MINTFAX_WEBHOOK_SECRET_FILE" in str(caught.value)
    assert "inline-4711" not in str(caught.value)


def test_a_webhook_secret_file_readable_by_others_is_warned_about_by_its_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret_file = tmp_path / "webhook-secret"
    secret_file.write_text("whsec_exposed-0815")
    secret_file.chmod(0o644)
    settings = Settings.from_env({"MINTFAX_WEBHOOK_SECRET_FILE": str(secret_file)})
    with caplog.at_level(logging.DEBUG):
        settings.webhook_secrets()
        settings.webhook_secrets()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"MINTFAX_WEBHOOK_SECRET_FILE {secret_file} is readable")
    assert "exposed-0815" not in warnings[0]
