"""Snapshots of a scorer's state: restarts cost what the state holds, not what the topic keeps.

A snapshot is the scorer's whole object graph written as JSON, compressed, behind a one-line
header (docs/streaming.md, "Snapshots"):

    {"format": "posmon-snapshot", "version": 1, "policy": sha256, "positions": {...},
     "length": n, "sha256": hex}\\n<zlib(JSON)>

No pickle and no code runs on load: the graph is rebuilt from plain JSON values, and the only
objects it may create are instances of classes defined in the scoring state (`monitor.scoring`,
`monitor.core`), created without calling their constructors and given exactly the attributes the
class declares today. A snapshot written by other code (a class gained or lost an attribute), for
another policy, truncated or altered, is refused with `SnapshotError`: the caller rebuilds from
the topic instead. Shared references stay shared (an attempt held by the attempt store and by a
detector's timer is one object after loading), so a restored scorer goes on exactly as the one
that was written would have (tests/test_snapshot.py proves it at random cut points).
"""

from __future__ import annotations

import hashlib
import json
import sys
import zlib
from collections import deque
from collections.abc import Mapping
from types import MethodType
from typing import Any, Final

from pydantic import BaseModel

from monitor.scoring.features import FEATURE_VERSION
from monitor.scoring.model import ModelSlot
from monitor.scoring.policy import Policy
from monitor.scoring.scorer import Scorer

FORMAT: Final = "posmon-snapshot"
VERSION: Final = 1
_TRUSTED: Final = ("monitor.scoring.", "monitor.core.")
# Rebuilt from the restored state, or given back (`Scorer.rewire`): the model is not state.
_TRANSIENT: Final = frozenset({"_handlers", "_model"})

Json = Any


class SnapshotError(ValueError):
    """The snapshot cannot be used: missing, corrupt, or written for other code or policy."""


def policy_digest(policy: Policy) -> str:
    return hashlib.sha256(policy.model_dump_json().encode()).hexdigest()


def dumps(scorer: Scorer, policy: Policy, positions: Mapping[int, int]) -> bytes:
    """The snapshot of `scorer`, which has scored each partition up to `positions` (the next
    offset to read) under `policy`."""
    body = zlib.compress(json.dumps(_Encoder().encode(scorer), separators=(",", ":")).encode(), 3)
    header = {
        "format": FORMAT,
        "version": VERSION,
        "policy": policy_digest(policy),
        "features": _features(scorer.model),
        "positions": {str(p): offset for p, offset in sorted(positions.items())},
        "length": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
    }
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + body


def read_header(data: bytes) -> dict[str, Any]:
    """The header of a snapshot, checked against its body; raises `SnapshotError`."""
    line, _, body = data.partition(b"\n")
    try:
        header = json.loads(line)
    except ValueError as exc:
        raise SnapshotError(f"unreadable header: {exc}") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise SnapshotError("not a posmon snapshot")
    if header.get("version") != VERSION:
        raise SnapshotError(f"format version {header.get('version')}, this code reads {VERSION}")
    if header.get("length") != len(body):
        raise SnapshotError(f"truncated: {len(body)} of {header.get('length')} bytes")
    if header.get("sha256") != hashlib.sha256(body).hexdigest():
        raise SnapshotError("checksum mismatch")
    return header


def _features(model: ModelSlot | None) -> str | None:
    """The feature version the state holds history for (None: no model, no history)."""
    return FEATURE_VERSION if model is not None and model.active else None


def loads(
    data: bytes, policy: Policy, model: ModelSlot | None = None, stage: str = "all"
) -> tuple[Scorer, dict[int, int]]:
    """The scorer a snapshot holds and the positions it covers, given the `model` slot it is to
    use and the `stage` it is to run; raises `SnapshotError`."""
    header = read_header(data)
    if header.get("policy") != policy_digest(policy):
        raise SnapshotError("written under another policy")
    if header.get("features") != _features(model):
        raise SnapshotError("written with other model features (or without a model)")
    try:
        graph = json.loads(zlib.decompress(data.partition(b"\n")[2]))
        fresh = Scorer(policy, model)
        scorer = _Decoder(fresh).decode(graph)
        positions = {int(p): int(offset) for p, offset in header["positions"].items()}
    except SnapshotError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, zlib.error) as exc:
        raise SnapshotError(f"unreadable state: {exc!r}") from exc
    if not isinstance(scorer, Scorer):
        raise SnapshotError("the snapshot holds no scorer")
    if scorer.stage != stage:
        raise SnapshotError(f"written by a {scorer.stage!r} stage, not {stage!r}")
    scorer.rewire(model)
    return scorer, positions


def _class_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _attributes(cls: type) -> tuple[str, ...]:
    """The attributes an instance of `cls` may hold: its slots (all bases), or none if it keeps
    a __dict__ (then its instance dict is used)."""
    names: list[str] = []
    for base in reversed(cls.__mro__):
        slots = base.__dict__.get("__slots__", ())
        names.extend((slots,) if isinstance(slots, str) else slots)
    return tuple(n for n in names if n not in ("__weakref__", "__dict__"))


def _has_instance_dict(cls: type) -> bool:
    return any("__dict__" in base.__dict__ for base in cls.__mro__ if base is not object)


class _Encoder:
    """Object graph -> JSON values. Mutable values and objects are written once and referred to
    by number afterwards, so aliasing survives."""

    def __init__(self) -> None:
        self._ids: dict[int, int] = {}
        self._alive: list[object] = []  # keeps encoded objects alive, so ids stay unique

    def encode(self, value: object) -> Json:
        if value is None or isinstance(value, bool | int | float | str):
            return value
        if isinstance(value, tuple) and not hasattr(value, "_fields"):
            return {"t": [self.encode(v) for v in value]}
        if isinstance(value, BaseModel):  # configuration: taken from the policy when loading
            return {"cfg": _class_name(type(value))}
        if isinstance(value, MethodType):
            return {"m": self.encode(value.__self__), "n": value.__func__.__name__}
        seen = self._ids.get(id(value))
        if seen is not None:
            return {"r": seen}
        ref = self._ids[id(value)] = len(self._ids)
        self._alive.append(value)
        if isinstance(value, list):
            return {"l": [self.encode(v) for v in value], "i": ref}
        if isinstance(value, dict):
            return {"d": [[self.encode(k), self.encode(v)] for k, v in value.items()], "i": ref}
        if isinstance(value, set | frozenset):
            kind = "s" if isinstance(value, set) else "fs"
            return {kind: [self.encode(v) for v in value], "i": ref}
        if isinstance(value, deque):
            return {"q": [self.encode(v) for v in value], "max": value.maxlen, "i": ref}
        cls = type(value)
        if not cls.__module__.startswith(_TRUSTED):
            raise TypeError(f"cannot snapshot a {_class_name(cls)}")
        if isinstance(value, tuple):  # a NamedTuple (an Event): its values in order
            return {"nt": _class_name(cls), "v": [self.encode(v) for v in value], "i": ref}
        names = _attributes(cls) + (tuple(vars(value)) if hasattr(value, "__dict__") else ())
        attrs = {n: self.encode(getattr(value, n)) for n in names if n not in _TRANSIENT}
        return {"o": _class_name(cls), "a": attrs, "i": ref}


class _Decoder:
    """JSON values -> object graph; creates only trusted classes, with their declared attributes.

    Configuration objects are taken from `fresh`, a scorer built from the same policy, matched
    by class (the policy digest in the header already proved it is the same policy).
    """

    def __init__(self, fresh: Scorer) -> None:
        self._objects: dict[int, object] = {}
        self._config: dict[str, list[BaseModel]] = {}
        self._shapes: dict[str, set[str]] = {}  # attributes of the fresh scorer's plain objects
        self._collect_config(fresh, set())

    def _collect_config(self, value: object, seen: set[int]) -> None:
        if id(value) in seen or isinstance(value, str | int | float | bool | type(None)):
            return
        seen.add(id(value))
        if isinstance(value, BaseModel):
            self._config.setdefault(_class_name(type(value)), []).append(value)
        elif isinstance(value, list | tuple | set | frozenset | deque):
            for v in value:
                self._collect_config(v, seen)
        elif isinstance(value, dict):
            for v in value.values():
                self._collect_config(v, seen)
        elif type(value).__module__.startswith(_TRUSTED):
            cls = type(value)
            names = _attributes(cls)
            if hasattr(value, "__dict__"):
                self._shapes[_class_name(cls)] = (set(names) | set(vars(value))) - _TRANSIENT
                names += tuple(vars(value))
            for n in names:
                if hasattr(value, n):
                    self._collect_config(getattr(value, n), seen)

    def decode(self, value: Json) -> object:
        if not isinstance(value, dict):
            if isinstance(value, list):
                raise SnapshotError("bare list in a snapshot")
            return value
        if "t" in value:
            return tuple(self.decode(v) for v in value["t"])
        if "r" in value:
            return self._objects[value["r"]]
        if "cfg" in value:
            return self._configuration(value["cfg"])
        if "m" in value:
            return getattr(self.decode(value["m"]), value["n"])
        ref = value["i"]
        if "l" in value:
            items: list[object] = []
            self._objects[ref] = items
            items.extend(self.decode(v) for v in value["l"])
            return items
        if "d" in value:
            mapping: dict[object, object] = {}
            self._objects[ref] = mapping
            for k, v in value["d"]:
                mapping[self.decode(k)] = self.decode(v)
            return mapping
        if "s" in value:
            found: set[object] = set()
            self._objects[ref] = found
            found.update(self.decode(v) for v in value["s"])
            return found
        if "fs" in value:
            frozen = frozenset(self.decode(v) for v in value["fs"])
            self._objects[ref] = frozen
            return frozen
        if "q" in value:
            queue: deque[object] = deque(maxlen=value["max"])
            self._objects[ref] = queue
            queue.extend(self.decode(v) for v in value["q"])
            return queue
        if "nt" in value:
            named = _trusted_class(value["nt"])._make(self.decode(v) for v in value["v"])
            self._objects[ref] = named
            return named
        return self._object(value, ref)

    def _object(self, value: dict[str, Any], ref: int) -> object:
        cls = _trusted_class(value["o"])
        attrs: dict[str, Json] = value["a"]
        shape = self._shapes.get(value["o"])
        if shape is None:
            shape = {n for n in _attributes(cls) if n not in _TRANSIENT}
            if _has_instance_dict(cls):
                shape = set(attrs)  # a plain object the fresh scorer does not hold: trust it
        if set(attrs) != shape:
            raise SnapshotError(f"{value['o']} changed since the snapshot was written")
        obj = cls.__new__(cls)
        self._objects[ref] = obj
        for name, encoded in attrs.items():
            object.__setattr__(obj, name, self.decode(encoded))
        return obj

    def _configuration(self, name: str) -> BaseModel:
        candidates = self._config.get(name)
        if not candidates:
            raise SnapshotError(f"no {name} in the policy")
        if len(candidates) > 1 and any(c != candidates[0] for c in candidates):
            raise SnapshotError(f"ambiguous configuration {name}")
        return candidates[0]


def _trusted_class(name: str) -> Any:
    module_name, _, qualname = name.partition(":")
    if not module_name.startswith(_TRUSTED) or "." in qualname:
        raise SnapshotError(f"untrusted class {name}")
    module = sys.modules.get(module_name)  # only what the scorer already imported
    cls = getattr(module, qualname, None) if module is not None else None
    if not isinstance(cls, type):
        raise SnapshotError(f"unknown class {name}")
    return cls
