"""`wakeline proto gen`: regenerate the committed protobuf and gRPC stubs."""

from __future__ import annotations

from pathlib import Path

from services.cli.common import add_command, add_group

PROTO_ROOT = Path(__file__).resolve().parents[2] / "protos"


def generate(out_root: Path = PROTO_ROOT) -> list[Path]:
    """Run protoc (grpcio-tools) on protos/wakeline/v1/*.proto, writing *_pb2.py, *_pb2.pyi and
    *_pb2_grpc.py under `out_root` (the package layout `wakeline/v1/`). Returns the files written."""
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted((PROTO_ROOT / "wakeline" / "v1").glob("*.proto"))
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *[str(p.relative_to(PROTO_ROOT)) for p in protos],
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit code {rc}")
    out = out_root / "wakeline" / "v1"
    return sorted(p for p in out.iterdir() if "_pb2" in p.name)


def _gen(args) -> int:
    for p in generate(Path(args.out) if args.out else PROTO_ROOT):
        print(p)
    return 0


def register(sub) -> None:
    grp = add_group(sub, "proto", "Protocol buffers of the wakeline.v1 API")
    p = add_command(grp, "gen", "Regenerate the Python stubs from protos/wakeline/v1/*.proto", _gen)
    p.add_argument("--out", default=None, help="output root (default: next to the .proto files)")
