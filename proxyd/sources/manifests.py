"""Offline source: Kubernetes manifests in YAML or JSON files (``proxyd plan``, tests).

A PATH is a file or a directory. A directory is read like ``kubectl apply -f DIR``
without ``-R``: not recursively, files ending in ``.yaml``, ``.yml`` or ``.json`` in
sorted name order, hidden files skipped. A ``.json`` file holds one document; any other
file is YAML with ``---``-separated documents (timestamps stay strings, as they do in
the API server's YAML → JSON conversion). A document is one API object or a list:
``kind: List`` with complete items, or a typed list such as ``ServiceList`` (what the
API returns) whose items inherit the list's kind and apiVersion.

Locations are ``FILE document N`` (N counts from 1, empty documents included) plus
``, items[I]`` inside a list. An object that appears twice replaces the earlier one.
Everything is read and translated before the state is touched, so a bad file leaves
``state`` as it was.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import yaml

from proxyd.errors import InputError, SourceError
from proxyd.model import EndpointSlice, NodeInfo, NodePool, Service
from proxyd.sources.translate import Translated, translate_object
from proxyd.store import ClusterState

__all__ = ["load", "read_objects"]

_SUFFIXES = (".yaml", ".yml", ".json")


class _Loader(yaml.SafeLoader):
    """SafeLoader without the implicit timestamp type: annotations stay strings."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load(paths: Sequence[str], state: ClusterState) -> list[str]:
    """Read every object under ``paths`` into ``state``; return notes (ignored kinds, …).

    Raises InputError (malformed file or object, ``where`` names file and document) or
    SourceError (a path cannot be read).
    """
    notes: list[str] = []
    objects: list[Translated] = []
    for where, obj in read_objects(paths, notes):
        try:
            translated = translate_object(obj)
        except InputError as exc:
            raise InputError(f"{where} ({exc.where})", exc.field, exc.message, exc.reason) from exc
        if translated is None:
            notes.append(f"{where}: ignoring kind {obj['kind']} ({obj['apiVersion']})")
        else:
            objects.append(translated)
    for found in objects:
        _store(state, found)
    return notes


def read_objects(
    paths: Sequence[str], notes: list[str] | None = None
) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(location, raw object) for every object under ``paths``, lists flattened, not
    translated (e.g. to feed a fake API server). Notes about paths go to ``notes``."""
    for path in paths:
        for file in _files(path, [] if notes is None else notes):
            yield from _objects(file)


def _store(state: ClusterState, obj: Translated) -> None:
    match obj:
        case Service():
            state.set_service(obj)
        case EndpointSlice():
            state.set_slice(obj)
        case NodeInfo():
            state.set_node(obj)
        case NodePool():
            state.set_pool(obj)


def _files(path: str, notes: list[str]) -> list[str]:
    if not os.path.isdir(path):
        return [path]
    try:
        names = sorted(os.listdir(path))
    except OSError as exc:
        raise SourceError(f"{path}: cannot list directory: {exc.strerror}") from exc
    files = [
        os.path.join(path, name)
        for name in names
        if name.lower().endswith(_SUFFIXES)
        and not name.startswith(".")
        and os.path.isfile(os.path.join(path, name))
    ]
    if not files:
        notes.append(f"{path}: no *.yaml, *.yml or *.json files")
    return files


def _objects(file: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(location, object) for every object in ``file``, lists flattened."""
    for number, doc in _documents(file):
        where = f"{file} document {number}"
        if doc is None:
            continue  # empty document, e.g. after a trailing "---"
        if not isinstance(doc, Mapping):
            raise InputError(
                where,
                "(document)",
                f"must be an API object, got {type(doc).__name__}",
                "not_an_object",
            )
        kind = doc.get("kind")
        if not (isinstance(kind, str) and kind.endswith("List") and "items" in doc):
            yield where, doc
            continue
        items = doc["items"] or []
        if not isinstance(items, list):
            raise InputError(where, "items", "must be a list", "not_a_list")
        inherited = {"apiVersion": doc.get("apiVersion"), "kind": kind[: -len("List")]}
        for index, item in enumerate(items):
            item_where = f"{where}, items[{index}]"
            if not isinstance(item, Mapping):
                raise InputError(
                    item_where,
                    "(item)",
                    f"must be an API object, got {type(item).__name__}",
                    "not_an_object",
                )
            if inherited["kind"] and "kind" not in item:
                item = {**inherited, **item}  # a typed list's items carry no kind
            yield item_where, item


#: What the parsers raise besides their own errors on hostile text: PyYAML on ``!!int x``
#: (ValueError) or ``!!timestamp x`` (AttributeError), both on integers of more than 4300
#: digits (ValueError) and on deep nesting (RecursionError).
_PARSER_FAILURES = (ValueError, AttributeError, RecursionError)


def _failure(exc: Exception) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return f"cannot be parsed ({exc})"


def _documents(file: str) -> Iterator[tuple[int, object]]:
    try:
        with open(file, encoding="utf-8") as stream:
            text = stream.read()
    except OSError as exc:
        raise SourceError(f"{file}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise InputError(file, f"byte {exc.start}", "is not UTF-8 text", "bad_encoding") from exc
    if file.lower().endswith(".json"):
        try:
            yield 1, json.loads(text)
        except json.JSONDecodeError as exc:
            field = f"line {exc.lineno}, column {exc.colno}"
            raise InputError(f"{file} document 1", field, exc.msg, "bad_json") from exc
        except _PARSER_FAILURES as exc:
            raise InputError(f"{file} document 1", "(json)", _failure(exc), "bad_json") from exc
        return
    docs = yaml.load_all(text, Loader=_Loader)
    number = 1
    while True:
        try:
            doc = next(docs)
        except StopIteration:
            return
        except yaml.YAMLError as exc:
            raise _yaml_error(f"{file} document {number}", exc) from exc
        except _PARSER_FAILURES as exc:
            where = f"{file} document {number}"
            raise InputError(where, "(yaml)", _failure(exc), "bad_yaml") from exc
        yield number, doc
        number += 1


def _yaml_error(where: str, exc: yaml.YAMLError) -> InputError:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        problem = exc.problem or "invalid YAML"
        message = f"{exc.context}: {problem}" if exc.context else problem
        return InputError(
            where, f"line {mark.line + 1}, column {mark.column + 1}", message, "bad_yaml"
        )
    return InputError(where, "(yaml)", str(exc), "bad_yaml")
