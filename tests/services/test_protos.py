"""The committed stubs must equal a fresh generation from the .proto files."""

from pathlib import Path

from services.cli.proto import PROTO_ROOT, generate


def test_committed_stubs_match_fresh_generation(tmp_path: Path):
    fresh = generate(tmp_path)
    assert fresh, "protoc produced nothing"
    committed_dir = PROTO_ROOT / "wakeline" / "v1"
    for f in fresh:
        committed = committed_dir / f.name
        assert committed.exists(), f"{f.name} is not committed: run `wakeline proto gen`"
        assert committed.read_text() == f.read_text(), f"{f.name} differs from a fresh generation: run `wakeline proto gen`"
    committed_names = {p.name for p in committed_dir.iterdir() if "_pb2" in p.name}
    assert committed_names == {f.name for f in fresh}, "stale generated files are committed"


def test_messages_round_trip():
    from wakeline.v1 import bus_pb2, edge_pb2

    ev = bus_pb2.KeywordEvent(event_id="e1", device_id="d1", keyword="lights on", score=0.9)
    assert bus_pb2.KeywordEvent.FromString(ev.SerializeToString()) == ev
    req = edge_pb2.StreamRequest(config=edge_pb2.StreamConfig(device_id="d1"))
    assert req.WhichOneof("msg") == "config"
