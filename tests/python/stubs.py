"""What the Python API clients share: checks that fail with a message, and Python stubs generated
from the project's .proto files (grpc_tools.protoc) into a temporary directory."""

import importlib
import subprocess
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parents[2] / "proto" / "proto"


class Failure(Exception):
    """A check that did not hold."""


def check(cond, message):
    if not cond:
        raise Failure(message)


def generate_stubs(out_dir, package, name):
    """Compiles PROTO_ROOT/package/name.proto (package like "media/v1") into out_dir and imports
    the generated modules (name_pb2, name_pb2_grpc)."""
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"{package}/{name}.proto",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    check(r.returncode == 0, f"protoc failed ({r.returncode}): {r.stderr.strip()}")
    # Regular packages, so an unrelated installed package of the same name cannot shadow ours.
    path = Path(out_dir)
    for part in package.split("/"):
        path = path / part
        (path / "__init__.py").touch()
    sys.path.insert(0, str(out_dir))
    module = package.replace("/", ".")
    return importlib.import_module(f"{module}.{name}_pb2"), importlib.import_module(f"{module}.{name}_pb2_grpc")
