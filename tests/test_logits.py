"""Logits loaders: every supported format round-trips; bad files fail with a message that names the fix."""

import io

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as save_safetensors_np
from safetensors.torch import save_file as save_safetensors_torch

import globalres as gr
from globalres.logits import check_logits, load_logits, load_pair, pair_problems, read_arrays

RNG = np.random.default_rng(0)
TARGET = RNG.normal(size=(3, 7)).astype(np.float32)
DRAFT = RNG.normal(size=(3, 7)).astype(np.float32)


def write(tmp_path, fmt, arrays):
    """Save `arrays` (a dict of numpy arrays) in format `fmt` and return the path."""
    path = tmp_path / f"logits{fmt}"
    if fmt == ".npy":
        (a,) = arrays.values()
        np.save(path, a)
    elif fmt == ".npz":
        np.savez(path, **arrays)
    elif fmt == ".safetensors":
        save_safetensors_np({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))
    else:
        torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}, path)
    return path


@pytest.mark.parametrize("fmt", [".npy", ".npz", ".safetensors", ".pt"])
@pytest.mark.parametrize("shape", [(7,), (3, 7)])
def test_single_array_round_trips(tmp_path, fmt, shape):
    a = TARGET[0] if shape == (7,) else TARGET
    got = load_logits(write(tmp_path, fmt, {"logits": a}))
    assert got.dtype == np.float64 and got.shape == shape
    np.testing.assert_allclose(got, a, atol=0)


@pytest.mark.parametrize("fmt", [".npz", ".safetensors", ".pt"])
def test_pair_in_one_file(tmp_path, fmt):
    target, draft = load_pair(write(tmp_path, fmt, {"target": TARGET, "draft": DRAFT}))
    np.testing.assert_allclose(target, TARGET, atol=0)
    np.testing.assert_allclose(draft, DRAFT, atol=0)


def test_pair_in_two_files_and_a_single_position(tmp_path):
    (tmp_path / "t").mkdir(), (tmp_path / "d").mkdir()
    target, draft = load_pair(write(tmp_path / "t", ".npy", {"x": TARGET[1]}),
                              write(tmp_path / "d", ".pt", {"x": DRAFT[1]}))
    assert target.shape == draft.shape == (1, 7)
    np.testing.assert_allclose(draft[0], DRAFT[1], atol=0)


def test_bytes_and_uploads_need_and_use_a_name():
    buf = io.BytesIO()
    np.savez(buf, target=TARGET, draft=DRAFT)
    target, _ = load_pair(buf.getvalue(), name="pair.npz")
    np.testing.assert_allclose(target, TARGET, atol=0)
    upload = io.BytesIO(buf.getvalue())
    upload.name = "up.npz"
    np.testing.assert_allclose(load_pair(upload)[1], DRAFT, atol=0)
    with pytest.raises(gr.InputError, match="name= is needed"):
        load_pair(buf.getvalue())


def test_bfloat16_safetensors_load(tmp_path):
    path = tmp_path / "bf16.safetensors"
    save_safetensors_torch({"logits": torch.tensor([1.0, 2.0, -3.5], dtype=torch.bfloat16)}, str(path))
    np.testing.assert_allclose(load_logits(path), [1.0, 2.0, -3.5], atol=0)


def test_minus_inf_marks_a_banned_token():
    a = check_logits(np.array([0.0, -np.inf, 1.0], dtype=np.float32))
    p = gr.logits.to_probs(a)
    assert p[1] == 0.0
    np.testing.assert_allclose(p.sum(), 1.0, atol=1e-12)


@pytest.mark.parametrize("bad, match", [
    (np.array([1, 2, 3]), "floating point"),
    (np.array([True, False]), "floating point"),
    (np.zeros((2, 2, 2)), r"shape \(V,\) or \(T, V\)"),
    (np.zeros((0,)), r"shape \(V,\) or \(T, V\)"),
    (np.array([[0.0, 1.0], [np.nan, 0.0]]), r"NaN or \+inf, first at index \(1, 0\)"),
    (np.array([0.0, np.inf]), r"NaN or \+inf"),
    (np.array([[0.0, 1.0], [-np.inf, -np.inf]]), "row 1 is all −inf"),
])
def test_bad_arrays_are_refused(tmp_path, bad, match):
    with pytest.raises(gr.InputError, match=match):
        load_logits(write(tmp_path, ".npy", {"x": bad}))


def test_integer_tensor_in_pt_is_refused(tmp_path):
    path = tmp_path / "ints.pt"
    torch.save(torch.arange(5), path)
    with pytest.raises(gr.InputError, match="floating point"):
        load_logits(path)


def test_pickled_code_is_never_run(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    path = tmp_path / "evil.pt"
    torch.save({"logits": torch.zeros(3), "payload": Boom()}, path)
    with pytest.raises(gr.InputError, match="refused to unpickle"):
        load_logits(path, key="logits")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(gr.InputError, match="could not be read"):
        load_logits(tmp_path / "obj.npy")


def test_size_limit_is_checked_before_reading(tmp_path):
    path = write(tmp_path, ".npy", {"x": TARGET})
    with pytest.raises(gr.InputError, match="over the limit"):
        load_logits(path, max_bytes=100)
    with pytest.raises(gr.InputError, match="over the limit"):
        load_logits(path.read_bytes(), name="x.npy", max_bytes=100)


def test_mismatched_pairs_are_refused(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    with pytest.raises(gr.InputError, match="share a vocabulary; got V = 7 and 6"):
        load_pair(write(tmp_path / "a", ".npy", {"x": TARGET}), write(tmp_path / "b", ".npy", {"x": DRAFT[:, :6]}))
    with pytest.raises(gr.InputError, match="3 positions and draft 2"):
        load_pair(write(tmp_path / "a", ".npz", {"x": TARGET}), write(tmp_path / "b", ".npz", {"x": DRAFT[:2]}))
    with pytest.raises(gr.InputError, match="named 'target' and 'draft'"):
        load_pair(write(tmp_path, ".npz", {"a": TARGET, "b": DRAFT}))


def test_format_and_key_errors(tmp_path):
    bogus = tmp_path / "x.txt"
    bogus.write_text("1 2 3")
    with pytest.raises(gr.InputError, match="unsupported file type"):
        read_arrays(bogus)
    broken = tmp_path / "x.npz"
    broken.write_bytes(b"not a zip")
    with pytest.raises(gr.InputError, match="could not be read"):
        read_arrays(broken)
    with pytest.raises(gr.InputError, match="no such file"):
        read_arrays(tmp_path / "missing.npy")
    two = write(tmp_path, ".npz", {"target": TARGET, "draft": DRAFT})
    with pytest.raises(gr.InputError, match="pass key="):
        load_logits(two)
    with pytest.raises(gr.InputError, match="no array 'nope'"):
        load_logits(two, key="nope")


def test_pair_problems_apply_temperature_and_top_k():
    problems = pair_problems(TARGET, DRAFT, n=3, temperature=0.5, top_k=2)
    assert len(problems) == 3
    for row, pb in enumerate(problems):
        z = TARGET[row].astype(np.float64) / 0.5
        np.testing.assert_allclose(pb.p, np.exp(z - z.max()) / np.exp(z - z.max()).sum(), atol=1e-12)
        assert (pb.q > 0).sum() == 2 and pb.n == 3
        assert set(np.flatnonzero(pb.q)) == set(np.argsort(-DRAFT[row])[:2])
    with pytest.raises(gr.InputError, match="same shape"):
        pair_problems(TARGET, DRAFT[:2], n=2)
