"""pycma's search saved as plain data, and rebuilt from it without unpickling anything.

pycma's own way to save a search is a pickle, and a pickle names code to run when it is loaded. An allow-list of
pycma's classes does not make that safe: `cma.utilities.utils.ShowInFolder.open_path` calls `os.system`, and pycma
evaluates option strings with `eval`. So a search is saved here as data only: numbers, tensors, and lists and dicts
of them, with the attribute names of the objects that held them. Loading builds a fresh search from the same
settings (the caller's, never the file's) and copies the saved numbers into it, attribute by attribute. A file can
set a number where the fresh search holds one; it cannot name a class, a function or a string to run.

What is not copied, because the fresh search already holds it from the same settings: callables, strings, the
options (`opts`, `inputargs`) and the logger. The random generator inside the `randn` option is saved by the caller.
Arrays and objects referenced twice stay one object after loading (pycma updates some in place).
"""

from __future__ import annotations

import types
from typing import Any

import numpy as np
import torch

# Rebuilt from the settings by the fresh search, never taken from a file.
SKIPPED_ATTRIBUTES = frozenset({"opts", "inputargs", "logger"})


def _built_later() -> dict[str, type]:
    """The objects a search makes after it starts (the wall-clock timer, at the first `ask`), by name. Imported here,
    not at the top, so that pycma is first imported by agents.evolution, which quiets its warning about matplotlib."""
    from cma.utilities.utils import ElapsedWCTime

    return {"cma.utilities.utils.ElapsedWCTime": ElapsedWCTime}


_CALLABLES = (types.FunctionType, types.MethodType, types.BuiltinFunctionType, type, types.ModuleType)


class CMAStateError(ValueError):
    """A saved search does not fit the fresh search it is copied into."""


def _is_pycma(value: Any) -> bool:
    return type(value).__module__.split(".")[0] == "cma" and hasattr(value, "__dict__")


def _class_name(value: Any) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}"


def to_data(search: Any) -> dict:
    """The pycma object `search` as nested dicts, lists, numbers and tensors (`torch.load(weights_only=True)` safe)."""
    return _Saver().save(search, "es")


def restore(fresh: Any, data: dict) -> Any:
    """Copy the saved `data` into `fresh`, a search built from the same settings; returns `fresh`.

    Raises CMAStateError naming the first place where the data does not fit (another class, another kind of value).
    """
    if not isinstance(data, dict) or data.get("kind") != "object":
        raise CMAStateError("CMA-ES state: the saved search is not an object record")
    return _Loader().load(fresh, data, "es")


class _Saver:
    def __init__(self) -> None:
        self.memo: dict[int, int] = {}  # id(value) -> reference number, for values that may be shared
        self.keep: list[Any] = []  # keeps memoised values alive, so no id is reused during the walk

    def save(self, value: Any, path: str) -> Any:
        if isinstance(value, np.generic):  # before float: numpy's float64 is a Python float too
            if not isinstance(value, (np.bool_, np.integer, np.floating)):
                raise CMAStateError(f"CMA-ES state: {path} holds a {type(value).__name__}, which is not a number")
            return {"kind": "scalar", "value": torch.from_numpy(np.asarray(value).copy())}
        if value is None or isinstance(value, (bool, int, float)):
            return value
        if isinstance(value, range):
            return {"kind": "range", "bounds": [value.start, value.stop, value.step]}
        if isinstance(value, np.random.Generator):
            return {"kind": "generator", "state": value.bit_generator.state}
        if isinstance(value, (np.ndarray, list, dict, tuple)) or _is_pycma(value):
            if id(value) in self.memo:
                return {"kind": "reference", "number": self.memo[id(value)]}
            number = self.memo[id(value)] = len(self.memo)
            self.keep.append(value)
            return {"number": number, **self._container(value, path)}
        if isinstance(value, str) or isinstance(value, _CALLABLES) or callable(value):
            return {"kind": "skipped"}  # the fresh search holds its own
        raise CMAStateError(f"CMA-ES state: {path} holds a {_class_name(value)}, which cannot be saved as data")

    def _container(self, value: Any, path: str) -> dict:
        if isinstance(value, np.ndarray):
            if value.dtype.kind not in "biuf":
                raise CMAStateError(f"CMA-ES state: {path} is an array of {value.dtype}, not of numbers")
            base = value.base
            if isinstance(base, np.ndarray) and base.dtype == value.dtype and _contiguous(base):
                # A view (pycma's dC is the diagonal of C): rebuilt as a view of the same array, so that it follows
                # the array's updates in place as it did before the save.
                offset = value.__array_interface__["data"][0] - base.__array_interface__["data"][0]
                return {
                    "kind": "view",
                    "base": self.save(base, f"{path} base"),
                    "offset": offset,
                    "shape": list(value.shape),
                    "strides": list(value.strides),
                }
            # The memory layout too: a Fortran-ordered matrix (pycma's eigenvectors) multiplies in another order
            # than its C-ordered copy, and the search then drifts by rounding after a resume.
            return {"kind": "array", "value": torch.from_numpy(value.copy(order="K"))}
        record: dict[str, Any] = {"kind": "object", "class": _class_name(value)} if _is_pycma(value) else {}
        if isinstance(value, dict):
            record.setdefault("kind", "dict")
            record["items"] = [[_save_key(k, path), self.save(v, f"{path}[{k!r}]")] for k, v in value.items()]
        elif isinstance(value, (list, tuple)):
            record.setdefault("kind", "tuple" if type(value) is tuple else "list")
            record["items"] = [self.save(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if _is_pycma(value):
            record["attributes"] = {
                name: self.save(attribute, f"{path}.{name}")
                for name, attribute in vars(value).items()
                if name not in SKIPPED_ATTRIBUTES
            }
        return record


class _Loader:
    def __init__(self) -> None:
        self.built: dict[int, Any] = {}  # reference number -> the value built for it

    def load(self, fresh: Any, data: Any, path: str) -> Any:
        if data is None or isinstance(data, (bool, int, float)):
            return data
        if not isinstance(data, dict) or not isinstance(data.get("kind"), str):
            raise CMAStateError(f"CMA-ES state: {path} is a {type(data).__name__}, not a saved value")
        kind = data["kind"]
        if kind == "skipped":
            return fresh
        if kind == "reference":
            if data.get("number") not in self.built:
                raise CMAStateError(f"CMA-ES state: {path} refers to a value saved nowhere before it")
            return self.built[data["number"]]
        if kind == "scalar":
            return _tensor(data.get("value"), path).numpy()[()]
        if kind == "range":
            bounds = data.get("bounds")
            if not (isinstance(bounds, list) and len(bounds) == 3 and all(type(b) is int for b in bounds)):
                raise CMAStateError(f"CMA-ES state: {path} is not a range of three integers")
            return range(*bounds)
        if kind == "generator":
            if not isinstance(fresh, np.random.Generator):
                raise CMAStateError(f"CMA-ES state: {path} holds a generator where a fresh search has none")
            try:
                fresh.bit_generator.state = data["state"]
            except (TypeError, ValueError, KeyError) as error:
                raise CMAStateError(f"CMA-ES state: {path} is not a generator state: {error}") from error
            return fresh
        value = self._build(fresh, data, kind, path)
        if "number" in data:
            self.built[data["number"]] = value
        return value

    def _build(self, fresh: Any, data: dict, kind: str, path: str) -> Any:
        if kind == "array":
            return _tensor(data.get("value"), path).numpy().copy(order="K")
        if kind == "view":
            return _view(self.load(None, data.get("base"), f"{path} base"), data, path)
        items = data.get("items", [])
        if not isinstance(items, list):
            raise CMAStateError(f"CMA-ES state: {path} has items that are not a list")
        if kind in ("list", "tuple"):
            old = fresh if isinstance(fresh, (list, tuple)) else ()
            built = [self.load(old[i] if i < len(old) else None, v, f"{path}[{i}]") for i, v in enumerate(items)]
            return tuple(built) if kind == "tuple" else built
        if kind == "dict":
            return self._items(fresh if isinstance(fresh, dict) else {}, items, path)
        if kind != "object":
            raise CMAStateError(f"CMA-ES state: {path} is of unknown kind {kind!r}")
        # Only ever an object the fresh search built itself, or one of the few it builds later, made here by its own
        # constructor: a file cannot make one of its choosing.
        if fresh is None and data.get("class") in _built_later():
            fresh = _built_later()[data["class"]]()
        if not _is_pycma(fresh) or _class_name(fresh) != data.get("class"):
            raise CMAStateError(
                f"CMA-ES state: {path} holds a {data.get('class')} where a fresh search holds "
                f"{'nothing' if fresh is None else _class_name(fresh)}"
            )
        if "number" in data:
            self.built[data["number"]] = fresh  # before its attributes, which may refer back to it
        if isinstance(fresh, dict):
            loaded = self._items(dict(fresh), items, path)
            fresh.clear()
            fresh.update(loaded)
        elif isinstance(fresh, list):
            fresh[:] = [self.load(fresh[i] if i < len(fresh) else None, v, f"{path}[{i}]") for i, v in enumerate(items)]
        attributes = data.get("attributes", {})
        if not isinstance(attributes, dict):
            raise CMAStateError(f"CMA-ES state: {path} has attributes that are not a mapping")
        for name, saved in attributes.items():
            if not isinstance(name, str) or name in SKIPPED_ATTRIBUTES or name.startswith("__"):
                raise CMAStateError(f"CMA-ES state: {path} names an attribute {name!r} that is never saved")
            if not (_skipped(saved) and name not in vars(fresh)):
                vars(fresh)[name] = self.load(vars(fresh).get(name), saved, f"{path}.{name}")
        return fresh

    def _items(self, old: dict, items: list, path: str) -> dict:
        loaded = {}
        for pair in items:
            if not isinstance(pair, list) or len(pair) != 2:
                raise CMAStateError(f"CMA-ES state: {path} has an item that is not a [key, value] pair")
            key = _load_key(pair[0], path)
            if _skipped(pair[1]) and key not in old:
                continue
            loaded[key] = self.load(old.get(key), pair[1], f"{path}[{key!r}]")
        return loaded


def _tensor(value: Any, path: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.dtype.is_complex:
        raise CMAStateError(f"CMA-ES state: {path} is not a tensor of numbers")
    return value.detach().cpu()


def _skipped(data: Any) -> bool:
    return isinstance(data, dict) and data.get("kind") == "skipped"


def _save_key(key: Any, path: str) -> Any:
    """A dict key as data: pycma's keys are strings, numbers and tuples of numbers."""
    if isinstance(key, np.generic):
        key = key.item()
    if key is None or isinstance(key, (str, bool, int, float)):
        return key
    if isinstance(key, tuple):
        return [_save_key(k, path) for k in key]
    raise CMAStateError(f"CMA-ES state: {path} has a key of type {type(key).__name__}, which cannot be saved")


def _load_key(key: Any, path: str) -> Any:
    if key is None or isinstance(key, (str, bool, int, float)):
        return key
    if isinstance(key, list):
        return tuple(_load_key(k, path) for k in key)
    raise CMAStateError(f"CMA-ES state: {path} has a key of type {type(key).__name__}")


def _view(base: Any, data: dict, path: str) -> np.ndarray:
    """The view `data` describes into `base`, after checking that every element it reaches lies inside `base`."""
    offset, shape, strides = data.get("offset"), data.get("shape"), data.get("strides")
    numbers = [offset, *(shape or []), *(strides or [])]
    if (
        not isinstance(base, np.ndarray)
        or not _contiguous(base)
        or not isinstance(shape, list)
        or not isinstance(strides, list)
        or len(shape) != len(strides)
        or not all(type(n) is int for n in numbers)
        or any(n < 0 for n in shape)
    ):
        raise CMAStateError(f"CMA-ES state: {path} is not a view of a saved array")
    low = offset + sum((n - 1) * s for n, s in zip(shape, strides, strict=True) if s < 0 and n > 0)
    high = offset + sum((n - 1) * s for n, s in zip(shape, strides, strict=True) if s > 0 and n > 0)
    if 0 in shape:
        return np.zeros(shape, base.dtype)
    if not (0 <= low and high + base.itemsize <= base.nbytes) or offset % base.itemsize:
        raise CMAStateError(f"CMA-ES state: {path} reaches outside the array it views")
    memory = base.ravel(order="K")  # a view of the base's memory in memory order (C- or Fortran-contiguous)
    return np.lib.stride_tricks.as_strided(memory[offset // base.itemsize :], shape, strides)


def _contiguous(array: np.ndarray) -> bool:
    return array.flags.c_contiguous or array.flags.f_contiguous
