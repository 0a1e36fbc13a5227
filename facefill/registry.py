"""Method registry: ``@register_method(name, config=Cls)`` on each Inpainter class."""
from __future__ import annotations

import dataclasses

_METHODS: dict[str, type] = {}


class UnknownMethodError(KeyError):
    def __str__(self):
        return f"unknown method {self.args[0]!r}; known: {', '.join(list_methods())}"


def register_method(name: str, config: type | None = None):
    """Class decorator: registers an Inpainter under ``name`` with its config dataclass."""

    def decorate(cls):
        if name in _METHODS:
            raise ValueError(f"method {name!r} registered twice")
        cls.name = name
        cls.config_class = config
        _METHODS[name] = cls
        return cls

    return decorate


def _ensure_loaded():
    import facefill.methods  # noqa: F401  (importing registers every built-in method)


def list_methods() -> list[str]:
    _ensure_loaded()
    return sorted(_METHODS)


def get_method_class(name: str) -> type:
    _ensure_loaded()
    if name not in _METHODS:
        raise UnknownMethodError(name)
    return _METHODS[name]


def make_config(name: str, values: dict | None = None):
    """Build the method's config dataclass from plain values, refusing unknown keys."""
    cls = get_method_class(name)
    if cls.config_class is None:
        if values:
            raise ValueError(f"method {name!r} takes no settings, got {sorted(values)}")
        return None
    known = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = set(values or {}) - known
    if unknown:
        raise ValueError(f"unknown setting(s) for {name}: {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(sorted(known))}")
    fields = {f.name: f for f in dataclasses.fields(cls.config_class)}
    for key, value in (values or {}).items():
        _check_value_type(name, key, value, fields[key].default)
    try:
        return cls.config_class(**(values or {}))
    except TypeError as error:  # a value of the wrong type, e.g. --set sample_steps=abc
        given = ", ".join(f"{key}={value!r}" for key, value in (values or {}).items())
        raise ValueError(f"bad setting value for {name} ({given}): {error}") from None


def _check_value_type(method: str, key: str, value, default) -> None:
    """Refuse a setting whose type differs from its default's (--set base_channels=abc), so the
    error names the setting instead of surfacing as a traceback deep in a network."""
    if default is None or default is dataclasses.MISSING or value is None:
        return
    expected = type(default)
    if expected is bool:
        fits = isinstance(value, bool)
    elif expected is int:
        fits = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        fits = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif expected in (tuple, list):
        fits = isinstance(value, (tuple, list))
    else:
        fits = isinstance(value, expected)
    if not fits:
        raise ValueError(f"bad setting value for {method}: {key}={value!r} "
                         f"(expected {expected.__name__}, like the default {default!r})")


def create_method(name: str, config=None, **values):
    """Instantiate a method; ``config`` is its dataclass or None for defaults (+ ``values``)."""
    cls = get_method_class(name)
    if config is None:
        config = make_config(name, values)
    elif values:
        config = dataclasses.replace(config, **values)
    return cls(config) if cls.config_class is not None else cls()
