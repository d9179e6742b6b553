"""Generates the Python protobuf and gRPC modules from protos/ (or checks that they are current).

Usage: python -m modelreg_server.tools.genproto [--check] PROTO_ROOT OUT_DIR
OUT_DIR is the `modelreg/v1` package inside the SDK; every file in it is generated.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

HEADER_INIT = '"""Generated protobuf and gRPC modules for modelreg.v1. Do not edit: run `make protos`."""\n'


def generate(proto_root: Path, out_dir: Path) -> None:
    """Writes generated modules for every .proto under proto_root/modelreg/v1 into out_dir."""
    protos = sorted(str(p.relative_to(proto_root)) for p in (proto_root / "modelreg" / "v1").glob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        well_known = Path(protoc.__file__).parent / "_proto"
        bindir = Path(sys.executable).parent
        args = [
            "protoc",
            f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
            f"-I{proto_root}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        generated = Path(tmp) / "modelreg" / "v1"
        if out_dir.exists():
            shutil.rmtree(out_dir)
        shutil.copytree(generated, out_dir)
    (out_dir / "__init__.py").write_text(HEADER_INIT)
    (out_dir / "py.typed").write_text("")


def _same_tree(a: Path, b: Path) -> list[str]:
    cmp = filecmp.dircmp(a, b)
    problems = [f"only in {a}: {n}" for n in cmp.left_only] + [f"only in {b}: {n}" for n in cmp.right_only]
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    problems += [f"differs: {n}" for n in mismatch + errors]
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if OUT_DIR is stale")
    parser.add_argument("proto_root", type=Path)
    parser.add_argument("out_dir", type=Path)
    ns = parser.parse_args()
    if not ns.check:
        generate(ns.proto_root, ns.out_dir)
        return
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "v1"
        generate(ns.proto_root, fresh)
        problems = _same_tree(fresh, ns.out_dir) if ns.out_dir.exists() else [f"{ns.out_dir} missing"]
    if problems:
        print("generated code is stale; run `make protos`:\n  " + "\n  ".join(problems), file=sys.stderr)
        raise SystemExit(1)
    print("generated code is current")


if __name__ == "__main__":
    main()
