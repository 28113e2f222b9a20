"""MINTFAX_API_KEY_FILE: read from disk, rotated without a restart, never shown."""

from __future__ import annotations

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


@pytest.mark.parametrize(("content", "reason"), [(None, "cannot be read"), ("  \n", "is empty")])
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
