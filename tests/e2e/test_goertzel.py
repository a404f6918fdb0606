"""The tone check the pjsua tests rely on: it finds a tone, and it refuses to find one in
silence, in an even mix, or at the wrong frequency."""

from __future__ import annotations

import math
import random
import struct
import wave
from pathlib import Path

import pytest

from tests.support.goertzel import dominant_tone, goertzel_power, rms, tone_powers

RATE = 8000
TONES = (1000.0, 1500.0)


def write_wav(path: Path, parts: list[tuple[float, float]], seconds: float = 1.0,
              noise: float = 0.0) -> Path:
    rng = random.Random(7)
    frames = bytearray()
    for n in range(int(RATE * seconds)):
        x = sum(a * math.sin(2 * math.pi * hz * n / RATE) for hz, a in parts)
        x += noise * rng.uniform(-1, 1)
        frames += struct.pack("<h", max(-32768, min(32767, int(x * 32767))))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(bytes(frames))
    return path


def test_power_reads_amplitude_squared() -> None:
    samples = [0.5 * math.sin(2 * math.pi * 1000 * n / RATE) for n in range(RATE)]
    assert goertzel_power(samples, 1000, RATE) == pytest.approx(0.25, rel=0.01)
    assert goertzel_power(samples, 1500, RATE) < 1e-6
    assert goertzel_power([], 1000, RATE) == 0.0


def test_pure_tone_is_dominant(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "t.wav", [(1500, 0.3)])
    assert dominant_tone(path, TONES) == 1500
    assert rms(path) == pytest.approx(0.3 / math.sqrt(2), rel=0.02)


def test_weak_other_tone_still_dominant_strong_one_wins(tmp_path: Path) -> None:
    # Amplitudes 0.3 and 0.05: powers 36× apart, above the 10× bar.
    path = write_wav(tmp_path / "t.wav", [(1000, 0.3), (1500, 0.05)], noise=0.02)
    assert dominant_tone(path, TONES) == 1000


def test_even_mix_has_no_dominant_tone(tmp_path: Path) -> None:
    # Amplitudes 0.3 and 0.15: powers only 4× apart.
    path = write_wav(tmp_path / "t.wav", [(1000, 0.3), (1500, 0.15)])
    powers = tone_powers(path, TONES)
    assert powers[1000] > powers[1500]
    assert dominant_tone(path, TONES) is None


def test_silence_and_noise_have_no_dominant_tone(tmp_path: Path) -> None:
    assert dominant_tone(write_wav(tmp_path / "s.wav", []), TONES) is None
    assert dominant_tone(write_wav(tmp_path / "n.wav", [], noise=0.3), TONES) is None


def test_tone_off_the_candidates_is_not_reported(tmp_path: Path) -> None:
    assert dominant_tone(write_wav(tmp_path / "t.wav", [(440, 0.3)]), TONES) is None


def test_rejects_stereo(tmp_path: Path) -> None:
    path = tmp_path / "st.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(b"\0" * 400)
    with pytest.raises(ValueError, match="16-bit mono"):
        tone_powers(path, TONES)
