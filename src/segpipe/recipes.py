"""Recipes: named overlays of ``params.yaml`` (``recipes/<name>.yaml``) that ``segpipe recipe <name>`` writes
into the project's params, keeping its comments; ``dvc repro`` then trains with them."""

from __future__ import annotations

from collections.abc import Mapping
from io import StringIO
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from segpipe import io
from segpipe.config import ConfigError, parse_params


class RecipeError(ValueError):
    """An unknown recipe, or one whose settings do not validate."""


def available_recipes(folder: Path) -> list[str]:
    return sorted(path.stem for path in Path(folder).glob("*.yaml"))


def load_overlay(folder: Path, name: str) -> dict[str, Any]:
    """The settings of recipe ``name`` (``folder/<name>.yaml``), as a nested mapping."""
    path = Path(folder) / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(available_recipes(folder)) or "none"
        raise RecipeError(f"{path}: no such recipe; recipes in {folder}: {known}")
    overlay = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(overlay, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of params.yaml sections")
    return overlay


def _round_trip_value(value: Any) -> Any:
    """Lists written inline (``[a, b]``) as params.yaml writes them; mappings as blocks."""
    if isinstance(value, list):
        sequence = CommentedSeq(_round_trip_value(item) for item in value)
        sequence.fa.set_flow_style()
        return sequence
    if isinstance(value, Mapping):
        mapping = CommentedMap()
        for key, item in value.items():
            mapping[key] = _round_trip_value(item)
        return mapping
    return value


def _represent_null(representer: Any, _: None) -> Any:
    return representer.represent_scalar("tag:yaml.org,2002:null", "null")  # as params.yaml writes it


def merge(target: CommentedMap, overlay: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Write ``overlay`` into ``target`` (mappings merged key by key, anything else replaced); the dotted
    keys whose values changed."""
    changed = []
    for key, value in overlay.items():
        dotted = f"{prefix}{key}"
        current = target.get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            changed += merge(current, value, f"{dotted}.")
        elif current != value:
            target[key] = _round_trip_value(value)
            changed.append(dotted)
    return changed


def apply_recipe(name: str, params_path: Path, folder: Path, root: str | None = None) -> list[str]:
    """Merge recipe ``name`` (and ``prepare.root``, when given) into ``params_path``; the file is checked
    as a whole before it is replaced (atomically). Returns the changed keys."""
    overlay = load_overlay(folder, name)
    if root is not None:
        overlay.setdefault("prepare", {})["root"] = root
    document = YAML()
    document.preserve_quotes = True
    document.width = 4096  # keep long comment lines as they are
    document.representer.add_representer(type(None), _represent_null)
    data = document.load(Path(params_path).read_text(encoding="utf-8"))
    changed = merge(data, overlay)
    text = StringIO()
    document.dump(data, text)
    try:
        parse_params(yaml.safe_load(text.getvalue()), Path(params_path))
    except ConfigError as error:
        raise RecipeError(f"recipe {name} does not fit {params_path}: {error}") from None
    io.write_text(Path(params_path), text.getvalue())
    return changed
