"""Session configuration: the GRID `create_config` merge of `airgen` + `grid` settings with the session id."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping
from typing import Any

CONFIG_FILE_NAME = "session_config.json"


def build_session_config(config: Mapping[str, Any], session_id: str) -> dict[str, Any]:
    """The configuration a session's workload reads, as GRID's `create_config` builds it.

    Raises ValueError naming the missing section when `airgen` or `grid` is absent.
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"session config must be a JSON object, got {type(config).__name__}")
    for section in ("airgen", "grid"):
        if section not in config:
            raise ValueError(f"session config is missing the {section!r} settings")
        if not isinstance(config[section], Mapping):
            raise ValueError(f"session config {section!r} must be an object, got {type(config[section]).__name__}")
    if not session_id:
        raise ValueError("session_id must be a non-empty string")
    return {"session_id": session_id, "airgen": dict(config["airgen"]), "grid": dict(config["grid"])}


def read_session_config_file(path: str | pathlib.Path) -> dict[str, Any]:
    """Read a session configuration file (JSON); ValueError when unreadable or not an object."""
    try:
        data = json.loads(pathlib.Path(path).read_text())
    except FileNotFoundError as exc:
        raise ValueError(f"session_config_file_path: no such file {str(path)!r}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"session_config_file_path: {str(path)!r} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"session_config_file_path: {str(path)!r} must hold a JSON object")
    return data


def render_session_config(merged: Mapping[str, Any]) -> str:
    return json.dumps(merged, indent=2, sort_keys=True)
