"""A device's credentials file: read by its worker only, never by the daemon, never logged.

The file must be private (no group or world permission bits: 0600 or 0400), else it is refused,
naming the path. Its content is a YAML/JSON mapping (e.g. `apikey: ...`)."""
from __future__ import annotations

import os
import stat

import yaml

from .errors import ConfigError


def check_private(path: str, field: str) -> None:
    """Refuse a credentials file that is missing, not a regular file, or readable beyond its owner
    (stat only: the daemon checks this at config load without reading the secret)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ConfigError(f"{field}: cannot use {path} ({e.strerror})", field=field) from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{field}: {path} is not a regular file", field=field)
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise ConfigError(f"{field}: {path} has mode {mode:04o}: group and others must have no access "
                          f"(chmod 600 {path})", field=field, limit="0600")


def load(path: str, field: str) -> dict:
    """The worker's read of the file (after the same check)."""
    check_private(path, field)
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        # never echo the content: the parser's message may quote it
        raise ConfigError(f"{field}: {path} is not a readable YAML/JSON mapping ({type(e).__name__})",
                          field=field) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{field}: {path} must hold a mapping (e.g. apikey: ...)", field=field)
    return {str(k): v for k, v in data.items()}
