"""TorchServe token authorization keys, read from the key_file.json the server writes where it starts.

Keys expire (config.properties: token_expiration_min) and can be regenerated through the token API, so clients
never cache a key for good: they read the file again when a call is answered 401.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

DEFAULT_KEY_FILE = Path(os.environ.get("TAGGER_KEY_FILE", "key_file.json"))


class KeyFileError(RuntimeError):
    pass


def read_key(kind: str, key_file: str | Path = DEFAULT_KEY_FILE) -> str:
    """The current 'inference' or 'management' key."""
    path = Path(key_file)
    try:
        data = json.loads(path.read_text())
        return data[kind]["key"]
    except FileNotFoundError:
        raise KeyFileError(f"{path} not found: is TorchServe running, started from this directory "
                           f"(make serve)? Set TAGGER_KEY_FILE to point elsewhere.") from None
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise KeyFileError(f"{path} has no {kind!r} key: {exc}") from None


def bearer(kind: str, key_file: str | Path = DEFAULT_KEY_FILE) -> dict[str, str]:
    return {"Authorization": f"Bearer {read_key(kind, key_file)}"}
