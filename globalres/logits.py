"""Logits from files, and from logits to probabilities: temperature, top-k and top-p (nucleus) truncation.

Notation: V tokens; a logits array is (V,) for one position or (T, V) for T positions; p is the target's
law softmax(target/τ), q the draft's, optionally truncated to its top-k tokens or its top-p nucleus.

Files are read without unpickling: .npy / .npz with ``allow_pickle=False``, .safetensors, and .pt only
through torch's loader with ``weights_only=True``. A file holds one array (a single logits array) or several
named ones ("target" and "draft" for a pair). Every loader checks the size limit before reading, then
dtype (floating point only), shape, NaN/+inf and matching vocabularies, and raises InputError with
the fix.

>>> import numpy as np, io
>>> buf = io.BytesIO(); np.savez(buf, target=np.log([[.5, .3, .2]]), draft=np.log([[.2, .3, .5]]))
>>> target, draft = load_pair(buf.getvalue(), name="pair.npz")
>>> target.shape, draft.shape
((1, 3), (1, 3))
>>> pair_problems(target, draft, n=2)[0]
Problem(V=3, n=2, law='iid')
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np

from .problem import InputError, Problem

MAX_BYTES = 256 * 2**20  # 256 MiB: about 1300 positions of a 49152-token vocabulary in float32
FORMATS = (".npy", ".npz", ".safetensors", ".pt")


def to_probs(logits, *, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, name: str = "logits") -> np.ndarray:
    """softmax(logits / temperature), then keep the top-k tokens and/or the smallest nucleus of mass ≥ top_p.

    Tokens with logit −inf get probability 0. Ties at the top-k boundary go to the lower token id.
    """
    try:
        z = np.asarray(logits, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a 1-D array of numbers.") from None
    if z.ndim != 1 or z.size == 0:
        raise InputError(f"{name} must be a non-empty 1-D array; got shape {z.shape}.")
    if np.isnan(z).any() or np.isposinf(z).any():
        raise InputError(f"{name} contain NaN or +inf; logits must be finite (−inf marks a banned token).")
    if not np.isfinite(z).any():
        raise InputError(f"{name} are all −inf: no token can be sampled.")
    if not (isinstance(temperature, (int, float, np.floating)) and temperature > 0 and np.isfinite(temperature)):
        raise InputError(f"temperature must be a finite number > 0; got {temperature!r}.")
    z = z / temperature
    z = z - z[np.isfinite(z)].max()
    probs = np.exp(z)
    probs /= probs.sum()
    order = np.lexsort((np.arange(z.size), -probs))  # most likely first, ties to the lower id
    keep = np.zeros(z.size, dtype=bool)
    keep[order] = True
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
            raise InputError(f"top_k must be a whole number ≥ 1; got {top_k!r}.")
        keep[order[top_k:]] = False
    if top_p is not None:
        if not (isinstance(top_p, (int, float, np.floating)) and 0 < top_p <= 1):
            raise InputError(f"top_p must lie in (0, 1]; got {top_p!r}.")
        # smallest prefix whose mass reaches top_p (always at least one token)
        cut = int(np.searchsorted(np.cumsum(probs[order]), top_p * (1 - 1e-12))) + 1
        keep[order[cut:]] = False
    probs = np.where(keep, probs, 0.0)
    return probs / probs.sum()


# --------------------------------------------------------------------------- reading files
def _source_bytes(source, name: str | None, max_bytes: int) -> tuple[bytes, str]:
    """The raw bytes and a display name of a path, bytes, or file-like object (an upload), size-checked first."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise InputError(f"{path}: no such file.")
        size, name = path.stat().st_size, name or path.name
        if size > max_bytes:
            raise InputError(f"{name} is {size / 2**20:.1f} MiB, over the limit of {max_bytes / 2**20:.1f} MiB; "
                             f"keep fewer positions or raise max_bytes.")
        return path.read_bytes(), name
    if hasattr(source, "read"):
        name = name or getattr(source, "name", None)
        size = getattr(source, "size", None)
        if size is not None and size > max_bytes:
            raise InputError(f"{name} is {size / 2**20:.1f} MiB, over the limit of {max_bytes / 2**20:.1f} MiB.")
        source = source.read(max_bytes + 1)
    if not isinstance(source, (bytes, bytearray, memoryview)):
        raise InputError(f"logits source must be a path, bytes or a file object; got {type(source).__name__}.")
    data = bytes(source)
    if name is None:
        raise InputError("name= is needed with raw bytes: its suffix (.npy, .npz, .safetensors, .pt) tells the format.")
    if len(data) > max_bytes:
        raise InputError(f"{name} is over the limit of {max_bytes / 2**20:.1f} MiB; keep fewer positions "
                         f"or raise max_bytes.")
    return data, name


def _torch_to_numpy(tensor, name: str, key: str) -> np.ndarray:
    import torch

    if not isinstance(tensor, torch.Tensor):
        raise InputError(f"{name}: entry {key!r} is a {type(tensor).__name__}, not a tensor of logits.")
    if not tensor.is_floating_point():
        raise InputError(f"{name}: {key!r} has dtype {tensor.dtype}; logits must be floating point.")
    return tensor.detach().to("cpu", torch.float64).numpy()


def read_arrays(source, *, name: str | None = None, max_bytes: int = MAX_BYTES) -> dict[str, np.ndarray]:
    """Every array in a .npy / .npz / .safetensors / .pt file, by name (a .npy file's one array is "logits").

    Parameters
    ----------
    source : path, bytes or file-like (e.g. a Streamlit upload)
    name : display name; its suffix picks the format (required with raw bytes)
    max_bytes : files larger than this are refused before they are read

    Raises
    ------
    InputError
        Unknown suffix, unreadable or oversized file, a .pt file that needs unpickling of code.
    """
    data, name = _source_bytes(source, name, max_bytes)
    suffix = Path(name).suffix.lower()
    try:
        if suffix == ".npy":
            return {"logits": np.load(io.BytesIO(data), allow_pickle=False)}
        if suffix == ".npz":
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        if suffix == ".safetensors":
            # through torch so bfloat16 files (common for model outputs) load too
            from safetensors.torch import load

            return {k: _torch_to_numpy(v, name, k) for k, v in load(data).items()}
        if suffix == ".pt":
            import torch

            buffer = io.BytesIO(data)
            obj = torch.load(buffer, weights_only=True, map_location="cpu")  # never unpickles code
            if isinstance(obj, torch.Tensor):
                return {"logits": _torch_to_numpy(obj, name, "logits")}
            if isinstance(obj, dict):
                return {str(k): _torch_to_numpy(v, name, str(k)) for k, v in obj.items()}
            raise InputError(f"{name} holds a {type(obj).__name__}; "
                             "save a tensor or a dict of tensors with torch.save.")
    except pickle.UnpicklingError as err:
        raise InputError(f"{name}: refused to unpickle anything but tensors (weights_only=True): {err}") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError) as err:
        if isinstance(err, InputError):
            raise
        raise InputError(f"{name} could not be read as {suffix or 'a known format'} ({err}). Save it with "
                         f"numpy.save / numpy.savez / safetensors save_file / torch.save.") from None
    raise InputError(f"{name}: unsupported file type {suffix!r}; use one of {', '.join(FORMATS)}.")


def check_logits(x, name: str = "logits") -> np.ndarray:
    """A float64 copy of a (V,) or (T, V) logits array, after checking dtype, shape and values.

    −inf marks a banned token; NaN, +inf, and a row with no finite logit are errors.
    """
    a = np.asarray(x)
    if a.dtype.kind != "f":
        raise InputError(f"{name} has dtype {a.dtype}; logits must be floating point "
                         f"(for probabilities or counts use Problem.from_weights).")
    if a.ndim not in (1, 2) or a.shape[-1] < 1 or (a.ndim == 2 and a.shape[0] < 1):
        raise InputError(f"{name} must have shape (V,) or (T, V) with V ≥ 1; got shape {a.shape}.")
    a = a.astype(np.float64)
    bad = np.argwhere(np.isnan(a) | np.isposinf(a))
    if bad.size:
        raise InputError(f"{name} hold NaN or +inf, first at index {tuple(bad[0].tolist())}; logits must be "
                         f"finite (−inf marks a banned token).")
    dead = np.flatnonzero(~np.isfinite(np.atleast_2d(a)).any(axis=-1))
    if dead.size:
        raise InputError(f"{name}: row {int(dead[0])} is all −inf, so no token can be sampled there.")
    return a


def load_logits(source, *, key: str | None = None, name: str | None = None,
                max_bytes: int = MAX_BYTES) -> np.ndarray:
    """One logits array, (V,) or (T, V) float64, from a file (see `read_arrays`); `key` picks among several."""
    arrays = read_arrays(source, name=name, max_bytes=max_bytes)
    label = name or getattr(source, "name", None) or str(source)
    if key is None:
        if len(arrays) != 1:
            raise InputError(f"{label} holds {len(arrays)} arrays ({', '.join(arrays)}); pass key= to pick one.")
        (key,) = arrays
    if key not in arrays:
        raise InputError(f"{label} has no array {key!r}; it has: {', '.join(arrays) or 'none'}.")
    return check_logits(arrays[key], f"{label}[{key}]")


def load_pair(target, draft=None, *, name: str | None = None, draft_name: str | None = None,
              max_bytes: int = MAX_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """Target and draft logits as two float64 (T, V) arrays with the same T and V.

    Either two files (one array each), or one file with arrays named "target" and "draft". A (V,)
    array is one position, T = 1.
    """
    if draft is None:
        arrays = read_arrays(target, name=name, max_bytes=max_bytes)
        label = name or getattr(target, "name", None) or str(target)
        if not {"target", "draft"} <= set(arrays):
            raise InputError(f"{label} must hold arrays named 'target' and 'draft' (it has: {', '.join(arrays)}); "
                             f"or pass the draft logits as a second file.")
        t, d = check_logits(arrays["target"], "target logits"), check_logits(arrays["draft"], "draft logits")
    else:
        t = load_logits(target, name=name, max_bytes=max_bytes)
        d = load_logits(draft, name=draft_name, max_bytes=max_bytes)
    t, d = np.atleast_2d(t), np.atleast_2d(d)
    if t.shape[1] != d.shape[1]:
        raise InputError(f"target and draft must share a vocabulary; got V = {t.shape[1]} and {d.shape[1]}.")
    if t.shape[0] != d.shape[0]:
        raise InputError(f"target has {t.shape[0]} positions and draft {d.shape[0]}; they must match row by row.")
    return t, d


def pair_problems(target, draft, n: int, *, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, law: str = "iid") -> list[Problem]:
    """One Problem per position: p = softmax(target/τ), q = top-k / top-p truncated softmax(draft/τ)."""
    t, d = np.atleast_2d(check_logits(target, "target logits")), np.atleast_2d(check_logits(draft, "draft logits"))
    if t.shape != d.shape:
        raise InputError(f"target and draft logits must have the same shape; got {t.shape} and {d.shape}.")
    return [Problem.from_logits(a, b, n, temperature=temperature, top_k=top_k, top_p=top_p, law=law)
            for a, b in zip(t, d)]
