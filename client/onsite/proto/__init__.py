"""Generated gRPC code for merchant.proto, built from the .proto on first import (and whenever it changes)."""

from __future__ import annotations

import importlib
import os
import tempfile
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_PROTO = _HERE / "merchant.proto"
_OUTPUTS = (_HERE / "merchant_pb2.py", _HERE / "merchant_pb2_grpc.py")


def build(force: bool = False) -> None:
    """Run protoc (grpcio-tools) when the generated modules are missing or older than merchant.proto."""
    if not force and all(p.exists() and p.stat().st_mtime >= _PROTO.stat().st_mtime for p in _OUTPUTS):
        return
    from grpc_tools import protoc

    root = _HERE.parents[2]
    with tempfile.TemporaryDirectory(dir=_HERE) as tmp:  # generate aside, then rename: no half-written module
        args = ["grpc_tools.protoc", f"-I{root}", f"--python_out={tmp}", f"--grpc_python_out={tmp}",
                str(_PROTO.relative_to(root))]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {_PROTO}")
        for out in _OUTPUTS:
            os.replace(Path(tmp) / out.relative_to(root), out)


build()
merchant_pb2 = importlib.import_module("client.onsite.proto.merchant_pb2")
merchant_pb2_grpc = importlib.import_module("client.onsite.proto.merchant_pb2_grpc")
SERVICE_NAME = merchant_pb2.DESCRIPTOR.services_by_name["MerchantProfiles"].full_name
