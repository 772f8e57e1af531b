"""A bank of real recorded noises (fans, machinery, hum, wind, rain, doors, footsteps, clicks).

Coloured noise and babble of synthetic speech are all the training noise otherwise; real
recordings have the non-stationary, tonal and impulsive structure that a microphone in a
kitchen or a car hears. Sources are Debian data packages (no install needed, see
``../shared/DATA.md``): ``openarena-data`` (``pak0.pk3`` is a zip of the game's sounds; its
``sound/world`` ambiences, doors and footsteps), ``tuxpaint-data`` (brush and tool sounds) and
``sound-theme-freedesktop``. They are resampled to 16 kHz mono, cut into clips of at most 6 s,
and stored Opus-compressed in one ``noise.npz`` (a few MB: it travels to GPU machines):

    python -m kws.data.noise build --out data/kws/noise      # downloads the .debs with apt-get
"""

from __future__ import annotations

import argparse
import io
import subprocess
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from kws.data.pool import decode, encode
from kws.data.utterance import SAMPLE_RATE

PACKAGES = ["openarena-data", "tuxpaint-data", "sound-theme-freedesktop"]
_PK3_PREFIXES = ("sound/world/", "sound/movers/", "sound/player/footsteps/")
CLIP_S = 6.0


def _load(data: bytes) -> np.ndarray | None:
    """Any audio file soundfile reads -> 16 kHz mono float32 (None if unreadable or silent)."""
    import soundfile as sf

    from kws.data.espeak import resample

    try:
        audio, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception:  # noqa: BLE001 - a stray non-audio file in a package: skip it
        return None
    x = resample(audio.mean(axis=1), sr, SAMPLE_RATE)
    if len(x) < SAMPLE_RATE // 10 or np.sqrt(np.mean(x ** 2)) < 1e-4:
        return None
    return x


def _sources(root: Path):
    """(name, bytes) of every sound file under an unpacked package tree, pk3 members included."""
    for path in sorted(root.rglob("*")):
        if path.suffix == ".pk3":
            with zipfile.ZipFile(path) as z:
                for name in sorted(z.namelist()):
                    if name.startswith(_PK3_PREFIXES) and name.endswith((".wav", ".ogg")):
                        yield f"{path.name}:{name}", z.read(name)
        elif path.suffix in (".wav", ".ogg", ".oga") and path.is_file():
            yield str(path.relative_to(root)), path.read_bytes()


def build(out: str | Path, debs: str | Path | None = None, tree: str | Path | None = None) -> int:
    """Write ``out/noise.npz``. ``debs``: a folder holding the .deb files (default: apt-get download);
    ``tree``: an already unpacked folder instead. Returns the number of clips."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if tree is None:
            if debs is None:
                subprocess.run(["apt-get", "download", *PACKAGES], cwd=tmp, check=True, capture_output=True)
                debs = tmp
            tree = tmp / "tree"
            for deb in sorted(Path(debs).glob("*.deb")):
                subprocess.run(["dpkg", "-x", str(deb), str(tree)], check=True)
        names, blobs = [], []
        for name, data in _sources(Path(tree)):
            x = _load(data)
            if x is None:
                continue
            step = int(CLIP_S * SAMPLE_RATE)
            for i in range(0, len(x), step):
                clip = x[i:i + step]
                if len(clip) >= SAMPLE_RATE // 10:
                    clip = clip / (np.abs(clip).max() + 1e-6) * 0.9
                    names.append(f"{name}@{i // SAMPLE_RATE}s")
                    blobs.append(encode(clip))
    if not blobs:
        raise RuntimeError("noise: no sound files found in the packages")
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    np.savez(out / "noise.npz", blob=np.frombuffer(b"".join(blobs), np.uint8), offsets=offsets,
             names=np.array(names))
    return len(blobs)


class NoiseBank:
    """The clips of a ``noise.npz``, decoded once (a few minutes of audio)."""

    def __init__(self, folder: str | Path):
        with np.load(Path(folder) / "noise.npz") as z:
            blob, offsets, self.names = z["blob"].tobytes(), z["offsets"], list(z["names"])
        self.clips = [decode(blob[offsets[i]:offsets[i + 1]]) for i in range(len(self.names))]

    def __len__(self) -> int:
        return len(self.clips)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` samples of one random clip (looped from a random point if short), unit variance."""
        clip = self.clips[int(rng.integers(len(self.clips)))]
        reps = -(-(n + len(clip)) // len(clip))
        start = int(rng.integers(len(clip)))
        y = np.tile(clip, reps)[start:start + n].astype(np.float32)
        return y / (np.sqrt(np.mean(y ** 2)) + 1e-9)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="build the bank of real noises")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--out", required=True)
    b.add_argument("--debs", default=None, help="folder of already downloaded .deb files")
    a = ap.parse_args(argv)
    n = build(a.out, a.debs)
    total = sum(len(c) for c in NoiseBank(a.out).clips) / SAMPLE_RATE
    print(f"noise bank {a.out}: {n} clips, {total / 60:.1f} min")


if __name__ == "__main__":
    main()
