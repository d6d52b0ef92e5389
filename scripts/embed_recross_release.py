"""Builds `tasks/recross_release/`: the ReCross authors' released data, xz-compressed, with a manifest.

    python scripts/embed_recross_release.py [--src DIR] [--out DIR]

Every `*.json` file of the release keeps its name and its bytes (as `<name>.xz`); `MANIFEST.json`
records each file's sha256 and size uncompressed (the release's own SHA256SUMS, checked here) and
its number of rows, so `tasks/recross.py` can verify a file when it is first read and count rows
without reading them. The LICENSE (MIT) travels with the data. The output is written beside the
target and renamed into place, so an interrupted build leaves nothing that looks complete.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import shutil
import sys
import tempfile

from recross_jax.io_utils import write_json_atomic

MANIFEST = "MANIFEST.json"
SOURCE = ("INK-USC/ReCross, data/ at commit 758056c0 (2022-05-01), MIT license; files stored in "
          "Git LFS upstream are absent (see the release README)")


def release_checksums(src: str) -> dict[str, str]:
    """The release's SHA256SUMS as {relative path: sha256}."""
    sums = {}
    with open(os.path.join(src, "SHA256SUMS"), encoding="utf-8") as f:
        for line in f:
            digest, path = line.split(maxsplit=1)
            sums[os.path.normpath(path.strip())] = digest
    return sums


def embed(src: str, out: str) -> dict:
    """Compresses every JSON file of `src` into `out`; returns the manifest."""
    sums = release_checksums(src)
    files = sorted(os.path.relpath(os.path.join(root, name), src)
                   for root, _, names in os.walk(src) for name in names if name.endswith(".json"))
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    staged = tempfile.mkdtemp(prefix=".tmp-release-", dir=parent)
    try:
        manifest = {"source": SOURCE, "files": {}}
        for i, relative in enumerate(files, 1):
            with open(os.path.join(src, relative), "rb") as f:
                data = f.read()
            digest = hashlib.sha256(data).hexdigest()
            if sums.get(relative) != digest:
                raise SystemExit(f"{relative}: sha256 {digest} is not the release's {sums.get(relative)}")
            parsed = json.loads(data)
            rows = len(parsed) if isinstance(parsed, list) else None
            path = os.path.join(staged, relative + ".xz")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
            manifest["files"][relative] = {"sha256": digest, "bytes": len(data), "rows": rows}
            print(f"[{i}/{len(files)}] {relative}", file=sys.stderr)
        shutil.copy(os.path.join(src, "LICENSE"), os.path.join(staged, "LICENSE"))
        write_json_atomic(os.path.join(staged, MANIFEST), manifest)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(staged, out)
    finally:
        if os.path.exists(staged):
            shutil.rmtree(staged)
    return manifest


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default=os.path.join(here, os.pardir, os.pardir, "shared", "data",
                                                      "recross_release"))
    parser.add_argument("--out", default=os.path.join(here, os.pardir, "tasks", "recross_release"))
    args = parser.parse_args()
    manifest = embed(os.path.normpath(args.src), os.path.normpath(args.out))
    print(f"{len(manifest['files'])} files embedded in {os.path.normpath(args.out)}")


if __name__ == "__main__":
    main()
