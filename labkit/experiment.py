"""Experiment configs, in one style: every knob of an experiment in one JSON-serialisable object,
the seed among them, that can be printed, saved next to the results and read back.

- :class:`ExperimentConfig`: the base of the typed configs (``TrainConfig``, ``rlhf.RLHFConfig``),
  dataclasses whose ``validate()`` names the first bad field.
- :class:`Experiment`: a notebook's own knobs (which learning rates to sweep, how many probe
  items, ...), given as keywords. It checks at once that every value is JSON and that there is a
  seed, and reads like a dict (``EXPERIMENT["steps"]``) or attributes (``EXPERIMENT.steps``).

    EXPERIMENT = labkit.Experiment(seed=0, steps=P.pick(smoke=2, cpu=8), learning_rates=[1e-5, 1e-3])
    EXPERIMENT.save("outputs/03/experiment.json")
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, fields
from pathlib import Path

from . import files


def _read_json_object(path, what: str) -> dict:
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a {what} JSON file ({e})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: not a {what} JSON file (expected an object)")
    return values


class ExperimentConfig:
    """What every experiment config shares (:class:`TrainConfig`, ``labkit.rlhf.RLHFConfig``): a
    dataclass of JSON values, the seed among them, written out with :meth:`to_dict` or :meth:`save`
    and read back with :meth:`from_dict` or :meth:`load`. Its ``validate()`` raises a ``ValueError``
    that names the first bad field (``learning_rate=0: must be a positive number``), through
    :meth:`require`, and returns the config."""

    def require(self, ok: bool, name: str, why: str) -> None:
        """Raise ``ValueError("name=value: why")`` unless ``ok``."""
        if not ok:
            raise ValueError(f"{name}={getattr(self, name)!r}: {why}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict):
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s) {sorted(unknown)}")
        return cls(**values)

    def save(self, path) -> Path:
        """Write the config as JSON, atomically (``labkit.files``)."""
        return files.write_text(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path):
        """Read a config written by :meth:`save`; a file that is not one is named in the error."""
        values = _read_json_object(path, cls.__name__)
        try:
            return cls.from_dict(values)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


def _check_json(name: str, value) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is plain JSON (finite numbers)."""
    if value is None or isinstance(value, (bool, str, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{name}={value!r}: must be a finite number (JSON has no NaN or inf)")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_json(f"{name}[{i}]", v)
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{name}: key {k!r} must be a string")
            _check_json(f"{name}[{k!r}]", v)
        return
    raise ValueError(f"{name}={value!r}: a {type(value).__name__} is not JSON; use numbers, text, lists or dicts")


def _check_knob(name: str, value) -> None:
    """A knob's value is plain JSON; the seed a non-negative whole number."""
    if name == "seed" and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise ValueError(f"seed={value!r}: must be a non-negative whole number")
    _check_json(name, value)


class Experiment(dict):
    """A notebook's knobs: keywords, JSON values only, a ``seed`` required. A dict (so
    ``json.dumps`` takes it as it is) whose knobs also read as attributes; :meth:`to_dict`,
    :meth:`save` and :meth:`load` as for the typed configs."""

    def __init__(self, **values):
        if "seed" not in values:
            raise ValueError("Experiment needs a seed (seed=0): the seed is part of the experiment")
        for name, value in values.items():
            _check_knob(name, value)
        super().__init__(json.loads(json.dumps(values)))   # a copy: tuples become lists, as in the file

    def __setitem__(self, name, value):
        """A knob changed or added later (``CONFIG["steps"] = 40``) is checked as at creation."""
        _check_knob(name, value)
        super().__setitem__(name, json.loads(json.dumps(value)))

    def update(self, *args, **values):
        for name, value in dict(*args, **values).items():
            self[name] = value

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"this Experiment has no {name!r}; it has {sorted(self)}") from None

    def __repr__(self) -> str:
        return f"Experiment({json.dumps(self)})"

    def _repr_pretty_(self, p, cycle) -> None:   # how Jupyter shows it: the JSON, one knob a line
        p.text(json.dumps(self, indent=1))

    def to_dict(self) -> dict:
        return json.loads(json.dumps(self))

    def save(self, path) -> Path:
        """Write the knobs as JSON, atomically (``labkit.files``)."""
        return files.write_text(path, json.dumps(self, indent=2))

    @classmethod
    def load(cls, path) -> "Experiment":
        """Read knobs written by :meth:`save`; a file that is not one is named in the error."""
        values = _read_json_object(path, "labkit.Experiment")
        try:
            return cls(**values)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
