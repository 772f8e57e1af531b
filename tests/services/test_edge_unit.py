"""Edge service pieces that need no server: audio decoding, answer routing, tokens, settings."""

from __future__ import annotations

import time

import numpy as np
import pytest
from wakeline.v1 import audio_pb2, bus_pb2

from services.edge.audio import AudioDecoder, AudioError, encode_audio
from services.edge.auth import TokenTable, bearer
from services.edge.keywords import normalize
from services.edge.sessions import CLOSE, SessionRegistry
from services.edge.settings import EdgeSettings

PCM16, F32 = audio_pb2.AUDIO_ENCODING_PCM16, audio_pb2.AUDIO_ENCODING_FLOAT32


def fmt(rate=16000, enc=PCM16, ch=1):
    return audio_pb2.AudioFormat(sample_rate=rate, encoding=enc, num_channels=ch)


@pytest.mark.parametrize("f,needle", [
    (fmt(enc=audio_pb2.AUDIO_ENCODING_UNSPECIFIED), "unsupported audio encoding AUDIO_ENCODING_UNSPECIFIED"),
    (fmt(enc=7), "unsupported audio encoding 7"),
    (fmt(rate=7999), "outside 8000..48000"),
    (fmt(rate=96000), "outside 8000..48000"),
    (fmt(ch=9), "num_channels 9"),
])
def test_bad_formats_are_rejected(f, needle):
    with pytest.raises(AudioError, match=needle):
        AudioDecoder(f, 16000, 4096)


def test_pcm16_roundtrip_and_channel_average():
    rng = np.random.default_rng()
    x = rng.uniform(-0.9, 0.9, size=(1000, 2)).astype(np.float32)
    dec = AudioDecoder(fmt(ch=2), 16000, 1 << 20)
    y = dec.decode(encode_audio(x, PCM16))
    np.testing.assert_allclose(y, x.mean(axis=1), atol=2 / 32768)
    assert dec.seconds == pytest.approx(1000 / 16000)


def test_float32_exact_and_nan_rejected():
    rng = np.random.default_rng()
    x = rng.uniform(-1, 1, size=800).astype(np.float32)
    dec = AudioDecoder(fmt(enc=F32), 16000, 1 << 20)
    np.testing.assert_array_equal(dec.decode(encode_audio(x, F32)), x)
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[17] = bad
        with pytest.raises(AudioError, match="NaN or infinite"):
            dec.decode(y.astype("<f4").tobytes())


@pytest.mark.parametrize("enc,ch,nbytes", [(PCM16, 1, 3), (PCM16, 2, 6), (F32, 1, 6), (F32, 2, 12)])
def test_partial_frames_rejected(enc, ch, nbytes):
    dec = AudioDecoder(fmt(enc=enc, ch=ch), 16000, 1 << 20)
    with pytest.raises(AudioError, match="not a whole number"):
        dec.decode(b"\0" * nbytes)


def test_chunk_size_limit():
    dec = AudioDecoder(fmt(), 16000, 1024)
    assert dec.decode(b"\0" * 1024).size == 512
    with pytest.raises(AudioError, match="exceeds the limit of 1024 bytes"):
        dec.decode(b"\0" * 1026)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampling_keeps_duration_and_pitch(rate):
    t = np.arange(rate * 2) / rate
    x = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    dec = AudioDecoder(fmt(rate=rate, enc=F32), 16000, 1 << 20)
    step = rate // 10 + 7  # chunk edges that do not line up with anything
    parts = [dec.decode(encode_audio(x[i:i + step], F32)) for i in range(0, x.size, step)]
    y = np.concatenate(parts + [dec.flush()])
    assert abs(y.size - 32000) <= 2
    spec = np.abs(np.fft.rfft(y[4000:-4000]))
    peak_hz = np.argmax(spec) * 16000 / (y.size - 8000)
    assert peak_hz == pytest.approx(440, abs=3)


def answer(device, aid=None, text="hi"):
    return bus_pb2.Answer(answer_id=aid or f"a-{time.perf_counter_ns()}", device_id=device, text=text)


def test_answers_reach_only_their_device():
    reg = SessionRegistry()
    a, b = reg.open("dev-a"), reg.open("dev-b")
    assert reg.route_answer(answer("dev-a", text="for a")) == "delivered"
    assert a.out.get_nowait().answer.text == "for a"
    assert b.out.empty()
    assert reg.route_answer(answer("dev-c")) == "queued"
    assert a.out.empty() and b.out.empty()


def test_parked_answers_delivered_on_reconnect_bounded_and_deduplicated():
    seen = []
    reg = SessionRegistry(answer_ttl_s=60, max_pending=3, on_answer=seen.append)
    for i in range(5):
        reg.route_answer(answer("dev", aid=f"id{i}", text=str(i)))
    assert reg.route_answer(answer("dev", aid="id4")) == "duplicate"
    assert reg.pending_count("dev") == 3
    s = reg.open("dev")
    got = [s.out.get_nowait().answer.text for _ in range(s.out.qsize())]
    assert got == ["2", "3", "4"]  # the oldest went first
    assert seen.count("dropped") == 2 and seen.count("delivered") == 3
    assert reg.pending_count() == 0


def test_parked_answers_expire():
    reg = SessionRegistry(answer_ttl_s=0.05, max_pending=10)
    reg.route_answer(answer("dev"))
    time.sleep(0.1)
    assert reg.expire() == 1
    assert reg.open("dev").out.empty()


def test_reconnect_supersedes_old_session():
    reg = SessionRegistry()
    old = reg.open("dev")
    new = reg.open("dev")
    item = old.out.get_nowait()
    assert item[0] is CLOSE and item[1] == "ABORTED"
    reg.close(old)  # the old handler's cleanup must not unregister the new session
    assert reg.get("dev") is new


def test_token_table(tmp_path):
    f = tmp_path / "tokens"
    f.write_text("# comment\nroot-token\nscoped kitchen-1 hall-*\n\n")
    t = TokenTable.load(f, "envtok, other")
    assert t.enabled and t.valid("root-token") and t.valid("envtok") and not t.valid("nope") and not t.valid(None)
    assert t.allows("root-token", "anything") and t.allows("other", "x")
    assert t.allows("scoped", "kitchen-1") and t.allows("scoped", "hall-7")
    assert not t.allows("scoped", "kitchen-2") and not t.allows("nope", "kitchen-1")
    assert not TokenTable.load(None, None).enabled and TokenTable().allows(None, "x")
    assert bearer([("authorization", "Bearer abc")]) == "abc" and bearer([("x", "y")]) is None
    with pytest.raises(FileNotFoundError):
        TokenTable.load(tmp_path / "missing", None)


def test_settings_from_env(monkeypatch):
    monkeypatch.setenv("WAKELINE_EDGE_PORT", "6001")
    monkeypatch.setenv("WAKELINE_EDGE_BUS_URL", "")
    monkeypatch.setenv("WAKELINE_EDGE_MAX_STREAMS", "3")
    s = EdgeSettings(node_id="n")
    assert s.port == 6001 and s.bus_url is None and s.max_streams == 3
    with pytest.raises(ValueError, match="both tls_cert and tls_key"):
        EdgeSettings(tls_cert="a.pem")
    with pytest.raises(ValueError):
        EdgeSettings(max_streams=0)


def test_normalize():
    assert normalize("  Lights   ON ") == "lights on"


def test_bus_config_precedence(monkeypatch):
    from services.edge.app import bus_config

    monkeypatch.delenv("WAKELINE_BUS_URL", raising=False)
    assert bus_config(EdgeSettings(node_id="n")).url is None  # embedded Redis
    monkeypatch.setenv("WAKELINE_BUS_URL", "redis://bus-host:6379/0")
    monkeypatch.setenv("WAKELINE_BUS_MAXLEN", "1234")
    cfg = bus_config(EdgeSettings(node_id="n", spool_dir="/tmp/s"))
    assert (cfg.url, cfg.maxlen, cfg.spool_dir) == ("redis://bus-host:6379/0", 1234, "/tmp/s")
    cfg = bus_config(EdgeSettings(node_id="n", bus_url="redis://edge-own:1/0", bus_namespace="ns2"))
    assert (cfg.url, cfg.namespace) == ("redis://edge-own:1/0", "ns2")


def test_lag_gauge_flags_sustained_lag_only():
    from services.edge.server import LagGauge

    g = LagGauge(1.0)
    g.observe(5.0)
    assert not g.overloaded  # one slow chunk is not overload
    for _ in range(100):
        g.observe(3.0)
    assert g.overloaded
    for _ in range(100):
        g.observe(0.01)
    assert not g.overloaded
    off = LagGauge(0.0)
    for _ in range(100):
        off.observe(100.0)
    assert not off.overloaded
    # no decoding at all for a while: whatever backlog there was is gone
    idle = LagGauge(1.0, idle_s=1.0)
    for _ in range(100):
        idle.observe(5.0, now=100.0)
    assert idle.value_at(100.5) > 4.0 and idle.value_at(110.0) < 0.01


def test_cli_flags_are_settings_and_bad_model_dir_fails_cleanly(tmp_path):
    import subprocess
    import sys

    from services.cli.edge import _FLAGS
    from services.edge.testing import REPO, free_port

    assert set(_FLAGS) <= set(EdgeSettings.model_fields)
    out = subprocess.run([sys.executable, "-m", "services.cli", "edge", "serve", "--port", str(free_port()),
                          "--host", "127.0.0.1", "--no-metrics", "--model-dir", str(tmp_path / "missing"),
                          "--spool-dir", str(tmp_path / "spool")],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "edge node failed to start" in out.stderr and "lacks encoder.onnx" in out.stderr
    assert "Traceback" not in out.stderr
