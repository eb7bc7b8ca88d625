"""Audio-visual clips for the separation benchmark, with the true sources and masks.

Why: the weight-free separator decides which sound belongs to an on-screen object from
how the object moves, so a fair test needs clips in which every object moves the way a
real one does *because of its own sound*, next to sounds that nothing on screen makes.
Each clip mixes real recorded or synthesised sounds (espeak-ng speech in many voices and
languages, General MIDI instruments and drums rendered by fluidsynth from the FluidR3
soundfont, the desktop sound themes' recordings) and renders video frames in which:

- a talking head's jaw opens with its speech envelope (plus a head bob/sway that has
  nothing to do with the sound);
- a struck object jolts at each hit and settles within ~100-200 ms;
- a bowed or blown instrument vibrates and/or swells with its envelope;
- a piano, marimba or plucked instrument pulses in size or brightness with its notes;
- a silent object drifts, turns and grows on its own, tied to no sound at all.

Which cues an object shows, their gains, a visual lag of 0-80 ms and extra visual noise
vary with the seed, so a separator cannot lean on one exact cue. ``camera-motion`` clips
pan and shake the whole picture (background, objects and masks). Frames get mild
sensor noise. Masks are exact: we draw every object at 2x and a pixel belongs to an
object when more than half of it is covered by the object's visible part.

    from benchmarks.separation_scenes import SCENES, make_scene
    scene = make_scene(SCENES[0])
    scene.mix                  # float32 [N] at 48 kHz, the sum of scene.sources
    scene.sources["drum"]      # float32 [N], same scaling as the mix
    scene.frames, scene.times  # uint8 [F, H, W, 3] RGB at 25 fps; frame times in s
    scene.masks["face_left"]   # bool [F, H, W]
    scene.prompts              # [(object, its source or None for a silent object)]

Halves: every category has clips in ``dev`` and in ``heldout``. The held-out half uses
other generator seeds *and* other sounds: other espeak-ng voices, languages and texts,
other GM programs and drum notes, other theme files and other photographs (see the
``*_BY_HALF`` tables below). Tune on ``dev`` only; ``heldout`` tells whether the tuning
carried over.

Needs espeak-ng, fluidsynth with /usr/share/sounds/sf2/FluidR3_GM.sf2,
sound-theme-freedesktop and oxygen-sounds (Debian packages) and ``mido``. Every rendered
sound is cached (in ``$SONOMASK_BENCH_CACHE`` or the temp folder) under a hash of what
made it, and so is every finished clip (an uncompressed .npz, ~23 MB at 192x112, keyed
by this file's source, the spec and the size), so a second run only loads them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import soundfile as sf
from scipy.ndimage import gaussian_filter1d, uniform_filter1d
from scipy.signal import resample_poly

VERSION = 1  # bump when rendering changes (part of every sound's cache key)
SR = 48_000
FPS = 25.0
DURATION = 10.0
SIZE = (192, 112)  # W x H
SF2 = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
FREEDESKTOP = Path("/usr/share/sounds/freedesktop/stereo")
OXYGEN = Path("/usr/share/sounds")

CATEGORIES = (
    "speech+percussion",
    "speech+offscreen",
    "overlapping-voices",
    "similar-instruments",
    "instrument+offscreen",
    "silent-object",
    "camera-motion",
)
HALVES = ("dev", "heldout")


# ============================================================================ the split
# Every sound and picture a clip may use, per half. Nothing appears in both halves.

VOICES_BY_HALF: dict[str, tuple[str, ...]] = {
    "dev": ("en-us+m3", "en-us+f3", "de+m2", "de+f2", "fr-fr+m4", "fr-fr+f4", "es+m3", "es+f2"),
    "heldout": (
        "en-gb-x-rp+m5",
        "en-gb-scotland+f5",
        "nl+m6",
        "nl+f1",
        "pl+m7",
        "pl+f5",
        "pt+m5",
        "it+f1",
        "sv+m6",
    ),
}

TEXTS_BY_LANGUAGE: dict[str, tuple[str, ...]] = {
    # dev
    "en-us": (
        "I parked the car behind the old bakery on Main Street.",
        "Nobody told me the meeting had moved to Thursday afternoon.",
        "Can you hand me the blue folder on the second shelf?",
        "We walked along the river until the lights came on.",
        "The weather report promised sunshine, but look at those clouds.",
    ),
    "de": (
        "Ich habe heute Morgen den Zug nach Hamburg verpasst.",
        "Kannst du mir bitte das Salz und den Pfeffer geben?",
        "Am Wochenende fahren wir mit den Kindern an den See.",
        "Die Bibliothek schließt heute schon um sechs Uhr.",
    ),
    "fr": (
        "Nous avons pris le petit déjeuner sur la terrasse ce matin.",
        "Est-ce que tu sais à quelle heure commence le film?",
        "Mon frère habite dans un petit village près de Lyon.",
        "Il faut absolument réparer la fenêtre de la cuisine.",
    ),
    "es": (
        "Mañana vamos a visitar a mis abuelos en Sevilla.",
        "¿Has visto las llaves que dejé encima de la mesa?",
        "El mercado abre muy temprano los sábados por la mañana.",
        "Me gustaría aprender a tocar la guitarra este verano.",
    ),
    # held-out
    "en-gb": (
        "The fishmonger on the corner closes at half past five.",
        "I would rather take the bus than queue for a taxi.",
        "Her grandmother still keeps bees at the bottom of the garden.",
        "Shall we put the kettle on before the match starts?",
    ),
    "nl": (
        "Morgen fietsen we samen naar het strand bij Zandvoort.",
        "Heb jij de sleutels van de fietsenstalling gezien?",
        "De bakker op de hoek verkoopt het lekkerste brood.",
        "We moeten de planten water geven voordat we vertrekken.",
    ),
    "pl": (
        "Jutro rano jedziemy pociągiem do Krakowa.",
        "Czy możesz zamknąć okno, bo robi się zimno?",
        "Moja siostra pracuje w szpitalu w centrum miasta.",
        "W sobotę ugotujemy razem zupę pomidorową.",
    ),
    "pt": (
        "Amanhã vamos almoçar num restaurante perto do rio.",
        "Podes ajudar-me a levar estas caixas para o carro?",
        "O meu primo trabalha numa livraria em Lisboa.",
    ),
    "it": (
        "Stasera mangiamo la pizza a casa di Marco.",
        "Hai già comprato i biglietti per il concerto?",
        "La mia vicina coltiva pomodori sul balcone.",
    ),
    "sv": (
        "Vi ska åka till stugan i skärgården i helgen.",
        "Har du sett min blå jacka någonstans?",
        "Bussen till centrum går var tionde minut.",
    ),
}


@dataclass(frozen=True)
class Instrument:
    """A General MIDI program, its natural range and how a player's body moves with it."""

    name: str  # also the source's name in a clip
    program: int  # GM program number, 0-based
    low: int  # MIDI note range
    high: int
    kind: str  # "bowed" | "blown" | "struck" | "plucked" (how it moves)
    shape: str  # how it is drawn: string | brass | wind | keys | bars


INSTRUMENTS_BY_HALF: dict[str, dict[str, Instrument]] = {
    "dev": {
        i.name: i
        for i in (
            Instrument("violin", 40, 62, 86, "bowed", "string"),
            Instrument("viola", 41, 55, 79, "bowed", "string"),
            Instrument("trumpet", 56, 58, 80, "blown", "brass"),
            Instrument("trombone", 57, 43, 67, "blown", "brass"),
            Instrument("flute", 73, 67, 91, "blown", "wind"),
            Instrument("clarinet", 71, 52, 79, "blown", "wind"),
            Instrument("piano", 0, 48, 84, "struck", "keys"),
            Instrument("marimba", 12, 55, 84, "struck", "bars"),
            Instrument("xylophone", 13, 65, 93, "struck", "bars"),
            Instrument("guitar", 24, 45, 74, "plucked", "string"),
        )
    },
    "heldout": {
        i.name: i
        for i in (
            Instrument("cello", 42, 41, 69, "bowed", "string"),
            Instrument("contrabass", 43, 31, 55, "bowed", "string"),
            Instrument("horn", 60, 46, 70, "blown", "brass"),
            Instrument("tuba", 58, 31, 55, "blown", "brass"),
            Instrument("alto_sax", 65, 56, 79, "blown", "wind"),
            Instrument("tenor_sax", 66, 49, 72, "blown", "wind"),
            Instrument("oboe", 68, 60, 84, "blown", "wind"),
            Instrument("e_piano", 4, 48, 81, "struck", "keys"),
            Instrument("vibraphone", 11, 55, 84, "struck", "bars"),
            Instrument("steel_guitar", 25, 43, 72, "plucked", "string"),
        )
    },
}

# Pairs of one family, for ``similar-instruments`` (and a second pair's members as solo
# players elsewhere).
SIMILAR_PAIRS_BY_HALF: dict[str, tuple[tuple[str, str], ...]] = {
    "dev": (
        ("violin", "viola"),
        ("trumpet", "trombone"),
        ("flute", "clarinet"),
        ("marimba", "xylophone"),
    ),
    "heldout": (
        ("cello", "contrabass"),
        ("horn", "tuba"),
        ("alto_sax", "tenor_sax"),
        ("e_piano", "vibraphone"),
    ),
}

# GM drum notes (channel 10), each an object that is struck: name -> (note, shape).
DRUMS_BY_HALF: dict[str, dict[str, tuple[int, str]]] = {
    "dev": {
        "snare": (38, "drum"),
        "kick": (36, "drum"),
        "low_tom": (45, "drum"),
        "cowbell": (56, "block"),
        "hand_clap": (39, "block"),
    },
    "heldout": {
        "electric_snare": (40, "drum"),
        "bass_drum": (35, "drum"),
        "high_tom": (48, "drum"),
        "bongo": (61, "drum"),
        "wood_block": (76, "block"),
        "claves": (75, "block"),
    },
}

# Off-screen sounds: the desktop themes' recordings. ``voice`` files are real spoken words.
THEMES_BY_HALF: dict[str, dict[str, tuple[str, ...]]] = {
    "dev": {
        "ring": (
            f"{FREEDESKTOP}/phone-incoming-call.oga",
            f"{FREEDESKTOP}/alarm-clock-elapsed.oga",
        ),
        "ambience": (
            f"{FREEDESKTOP}/complete.oga",
            f"{FREEDESKTOP}/message-new-instant.oga",
            f"{FREEDESKTOP}/service-login.oga",
            f"{FREEDESKTOP}/trash-empty.oga",
            f"{FREEDESKTOP}/bell.oga",
            f"{FREEDESKTOP}/dialog-warning.oga",
            f"{FREEDESKTOP}/camera-shutter.oga",
            f"{FREEDESKTOP}/suspend-error.oga",
        ),
        "voice": (
            f"{FREEDESKTOP}/audio-channel-front-left.oga",
            f"{FREEDESKTOP}/audio-channel-front-right.oga",
            f"{FREEDESKTOP}/audio-channel-front-center.oga",
            f"{FREEDESKTOP}/audio-channel-side-left.oga",
            f"{FREEDESKTOP}/audio-channel-side-right.oga",
        ),
    },
    "heldout": {
        "ring": (f"{OXYGEN}/Oxygen-Im-Phone-Ring.ogg", f"{OXYGEN}/Oxygen-Im-Sms.ogg"),
        "ambience": (
            f"{OXYGEN}/Oxygen-Sys-Log-In-Long.ogg",
            f"{OXYGEN}/Oxygen-Sys-Log-Out-Long.ogg",
            f"{OXYGEN}/Oxygen-K3B-Finish-Success.ogg",
            f"{OXYGEN}/Oxygen-Sys-App-Positive.ogg",
            f"{OXYGEN}/Oxygen-Im-Nudge.ogg",
            f"{OXYGEN}/Oxygen-Sys-Question.ogg",
            f"{OXYGEN}/Oxygen-Im-New-Mail.ogg",
            f"{OXYGEN}/Oxygen-Sys-Trash-Emptied.ogg",
        ),
        "voice": (
            f"{FREEDESKTOP}/audio-channel-rear-left.oga",
            f"{FREEDESKTOP}/audio-channel-rear-right.oga",
            f"{FREEDESKTOP}/audio-channel-rear-center.oga",
        ),
    },
}

# scikit-image sample photos: backgrounds, and what objects' surfaces are textured with.
BACKGROUNDS_BY_HALF = {
    "dev": ("coffee", "brick", "grass", "camera"),
    "heldout": ("rocket", "gravel", "chelsea", "coins"),
}
TEXTURES_BY_HALF = {
    "dev": ("astronaut", "coffee", "brick", "grass"),
    "heldout": ("rocket", "gravel", "chelsea", "text"),
}


# ============================================================================ scenes


@dataclass(frozen=True)
class SceneSpec:
    """One clip: ``recipe`` is the category whose sources it uses (for ``camera-motion``
    another category's), ``variant`` picks the 2-source (0) or 3-source (1) version."""

    name: str
    category: str
    half: str
    seed: int
    recipe: str
    variant: int = 0
    camera: bool = False


def _specs() -> list[SceneSpec]:
    plan = [(c, c, v) for c in CATEGORIES[:-1] for v in (0, 1)]
    plan += [("camera-motion", "speech+percussion", 1), ("camera-motion", "silent-object", 0)]
    plan += [("camera-motion", "overlapping-voices", 0)]
    out = []
    for half, base in (("dev", 1100), ("heldout", 7700)):
        for i, (cat, recipe, variant) in enumerate(plan):
            k = sum(1 for o in out if o.half == half and o.category == cat)
            out.append(
                SceneSpec(
                    f"{half}-{cat}-{'abc'[k]}",
                    cat,
                    half,
                    base + 37 * i,
                    recipe,
                    variant,
                    camera=cat == "camera-motion",
                )
            )
    return out


SCENES: list[SceneSpec] = _specs()
SCENES_BY_NAME = {s.name: s for s in SCENES}


@dataclass
class Scene:
    """A rendered clip with its true sources and masks."""

    spec: SceneSpec
    mix: np.ndarray  # float32 [N] at SR, peak 0.5
    sources: dict[str, np.ndarray]  # float32 [N] each, same scaling; they sum to the mix
    frames: np.ndarray  # uint8 [F, H, W, 3] RGB
    times: np.ndarray  # float64 [F], i / FPS
    masks: dict[str, np.ndarray]  # bool [F, H, W] per on-screen object
    prompts: list[tuple[str, str | None]]  # (object, its source; None: silent object)
    sr: int = SR


def tools_missing() -> list[str]:
    """What this module needs that is not installed (empty when all is there)."""
    missing = [t for t in ("espeak-ng", "fluidsynth") if shutil.which(t) is None]
    if not SF2.is_file():
        missing.append(str(SF2))
    files = {f for half in THEMES_BY_HALF.values() for group in half.values() for f in group}
    absent = sorted(f for f in files if not Path(f).is_file())
    if absent:
        missing.append(f"{len(absent)} theme sound(s) such as {absent[0]}")
    try:
        import mido  # noqa: F401
    except ImportError:
        missing.append("mido (pip)")
    return missing


# ============================================================================ sound


def _cache_dir(what: str = "separation-sounds") -> Path:
    root = os.environ.get("SONOMASK_BENCH_CACHE") or Path(tempfile.gettempdir()) / "sonomask-bench"
    path = Path(root) / what
    path.mkdir(parents=True, exist_ok=True)
    return path


def _cached(params: dict, make: Callable[[], np.ndarray]) -> np.ndarray:
    """A float32 mono sound at SR, made once by ``make()`` per ``params`` and kept on disk."""
    key = hashlib.sha1(json.dumps({"v": VERSION, **params}, sort_keys=True).encode()).hexdigest()
    path = _cache_dir() / f"{key[:20]}.wav"
    if not path.is_file():
        tmp = path.with_suffix(f".{os.getpid()}.tmp.wav")
        audio = make()
        sf.write(tmp, audio.astype(np.float32), SR, subtype="FLOAT")
        os.replace(tmp, path)
    audio, _ = sf.read(path, dtype="float32")
    return audio


def _to_mono_sr(audio: np.ndarray, sr: int) -> np.ndarray:
    x = audio.mean(axis=1) if audio.ndim == 2 else audio
    if sr != SR:
        g = math.gcd(sr, SR)
        x = resample_poly(x, SR // g, sr // g)
    return np.asarray(x, np.float32)


def _speak(voice: str, text: str, speed: int, pitch: int) -> np.ndarray:
    """espeak-ng's rendering of ``text``, trimmed of leading/trailing silence, at SR."""

    def make() -> np.ndarray:
        with tempfile.TemporaryDirectory() as d:
            wav = Path(d) / "s.wav"
            subprocess.run(
                [
                    "espeak-ng",
                    "-v",
                    voice,
                    "-s",
                    str(speed),
                    "-p",
                    str(pitch),
                    "-w",
                    str(wav),
                    text,
                ],
                check=True,
                capture_output=True,
            )
            audio, sr = sf.read(wav, dtype="float32")
        x = _to_mono_sr(audio, sr)
        loud = np.flatnonzero(np.abs(x) > 0.01 * np.abs(x).max())
        return x[max(0, loud[0] - 480) : loud[-1] + 2400] if len(loud) else x

    return _cached({"espeak": voice, "text": text, "s": speed, "p": pitch}, make)


def _fluidsynth(notes: list[tuple[float, float, int, int, int]], program: int) -> np.ndarray:
    """Render (start s, length s, MIDI note, velocity, channel) notes with FluidR3, at SR."""
    import mido

    tpb, tempo = 480, 500_000  # 960 ticks per second
    events = []
    for start, length, note, vel, ch in notes:
        events.append(
            (round(start * 960), 1, mido.Message("note_on", note=note, velocity=vel, channel=ch))
        )
        events.append(
            (
                round((start + length) * 960),
                0,
                mido.Message("note_off", note=note, velocity=0, channel=ch),
            )
        )
    events.sort(key=lambda e: (e[0], e[1]))
    mid = mido.MidiFile(ticks_per_beat=tpb)
    track = mido.MidiTrack()
    mid.tracks.append(track)
    track.append(mido.MetaMessage("set_tempo", tempo=tempo, time=0))
    track.append(mido.Message("program_change", program=program, channel=0, time=0))
    now = 0
    for tick, _, msg in events:
        track.append(msg.copy(time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=960))

    def make() -> np.ndarray:
        with tempfile.TemporaryDirectory() as d:
            mf, wav = Path(d) / "m.mid", Path(d) / "m.wav"
            mid.save(mf)
            subprocess.run(
                [
                    "fluidsynth",
                    "-ni",
                    "-g",
                    "0.6",
                    "-r",
                    str(SR),
                    "-F",
                    str(wav),
                    str(SF2),
                    str(mf),
                ],
                check=True,
                capture_output=True,
            )
            audio, sr = sf.read(wav, dtype="float32")
        return _to_mono_sr(audio, sr)

    return _cached({"fluidsynth": [list(n) for n in notes], "program": program}, make)


def _theme(path: str) -> np.ndarray:
    audio, sr = sf.read(path, dtype="float32")
    return _to_mono_sr(audio, sr)


def _fit(x: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n, np.float32)
    out[: min(n, len(x))] = x[:n]
    return out


def _place(track: np.ndarray, clip: np.ndarray, start: float) -> None:
    a = int(start * SR)
    if a >= len(track):
        return
    seg = clip[: len(track) - a]
    track[a : a + len(seg)] += seg


@dataclass
class Sound:
    """A source's samples and, for struck/played sounds, its note onsets."""

    name: str
    audio: np.ndarray  # float32 [N] at SR, not yet levelled
    kind: str  # speech | percussion | bowed | blown | struck | plucked | offscreen
    onsets: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # [k, (s, 0..1)]


def _speech(rng: np.random.Generator, voice: str, n: int, busy: bool) -> Sound:
    """Sentences in ``voice`` with random pauses; ``busy`` = shorter pauses (more overlap)."""
    lang = voice.split("+")[0]
    lang = {"en-us": "en-us", "fr-fr": "fr"}.get(lang, lang)
    if lang.startswith("en-gb"):
        lang = "en-gb"
    texts = list(TEXTS_BY_LANGUAGE[lang])
    rng.shuffle(texts)
    speed, pitch = int(rng.integers(135, 176)), int(rng.integers(30, 71))
    track = np.zeros(n, np.float32)
    t, k = float(rng.uniform(0.0, 0.8)), 0
    while t < n / SR - 0.5:
        clip = _speak(voice, texts[k % len(texts)], speed, pitch)
        _place(track, clip, t)
        t += len(clip) / SR + (rng.uniform(0.15, 0.8) if busy else rng.uniform(0.5, 1.8))
        k += 1
    return Sound(f"speech_{lang.split('-')[0]}", _fade_end(track), "speech")


def _fade_end(x: np.ndarray, seconds: float = 0.05) -> np.ndarray:
    k = int(seconds * SR)
    x[-k:] *= np.linspace(1, 0, k, dtype=np.float32)
    return x


_MAJOR = (0, 2, 4, 5, 7, 9, 11)
_MINOR = (0, 2, 3, 5, 7, 8, 10)


def _melody(rng: np.random.Generator, inst: Instrument, n: int) -> Sound:
    """A random melody with rests and phrase breaks, in the instrument's range."""
    scale = _MAJOR if rng.random() < 0.6 else _MINOR
    root = int(rng.integers(0, 12))
    pitches = [p for p in range(inst.low, inst.high + 1) if (p - root) % 12 in scale]
    beat = 60.0 / rng.uniform(80, 132)
    sustained = inst.kind in ("bowed", "blown")
    lengths = (0.5, 1, 1, 1.5, 2, 3) if sustained else (0.5, 0.5, 1, 1, 1.5, 2)
    idx = len(pitches) // 2 + int(rng.integers(-3, 4))
    notes, onsets = [], []
    t, in_phrase, phrase_len = float(rng.uniform(0.1, 1.0)), 0, int(rng.integers(4, 9))
    while t < n / SR - 0.4:
        if in_phrase >= phrase_len:  # breathe between phrases
            t += beat * rng.uniform(1.5, 4)
            in_phrase, phrase_len = 0, int(rng.integers(4, 9))
            continue
        if rng.random() < 0.12:
            t += beat * rng.choice((0.5, 1))
            continue
        idx = int(
            np.clip(idx + rng.choice((-3, -2, -1, -1, 1, 1, 2, 3, 4, -4)), 0, len(pitches) - 1)
        )
        dur = beat * float(rng.choice(lengths))
        vel = int(rng.integers(70, 116))
        notes.append(
            (round(t, 4), round(dur * (0.92 if sustained else 0.8), 4), pitches[idx], vel, 0)
        )
        onsets.append((t, vel / 127))
        t += dur
        in_phrase += 1
    audio = _fit(_fluidsynth(notes, inst.program), n)
    return Sound(inst.name, _fade_end(audio), inst.kind, np.array(onsets))


def _drum_track(rng: np.random.Generator, name: str, note: int, n: int) -> Sound:
    """Irregular hits of one GM drum note with pauses and accents."""
    notes, onsets = [], []
    t = float(rng.uniform(0.1, 0.8))
    while t < n / SR - 0.3:
        vel = int(rng.integers(60, 124))
        notes.append((round(t, 4), 0.1, note, vel, 9))
        onsets.append((t, vel / 127))
        t += float(rng.choice((0.18, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)))
        if rng.random() < 0.12:
            t += rng.uniform(1.0, 2.2)
    audio = _fit(_fluidsynth(notes, 0), n)
    return Sound(name, _fade_end(audio), "percussion", np.array(onsets))


def _theme_track(
    rng: np.random.Generator, files: tuple[str, ...], name: str, n: int, cover: float
) -> Sound:
    """Theme sounds placed at random times until about ``cover`` of the clip is filled."""
    track = np.zeros(n, np.float32)
    filled, tries = 0.0, 0
    while filled < cover * n / SR and tries < 40:
        tries += 1
        clip = _theme(str(rng.choice(files)))
        if len(clip) > 4 * SR:  # long jingles: a random stretch of 2-4 s
            seg = int(rng.uniform(2, 4) * SR)
            a = int(rng.integers(0, len(clip) - seg))
            clip = clip[a : a + seg].copy()
            clip[:480] *= np.linspace(0, 1, 480, dtype=np.float32)
        start = rng.uniform(0, n / SR - 0.3)
        _place(track, clip, start)
        filled += len(clip) / SR
    return Sound(name, _fade_end(track), "offscreen")


def _ring_track(rng: np.random.Generator, files: tuple[str, ...], n: int) -> Sound:
    """A phone/alarm ringing for a stretch: one file repeated with short gaps."""
    clip = _theme(str(rng.choice(files)))
    track = np.zeros(n, np.float32)
    t = rng.uniform(0, 3)
    end = t + rng.uniform(4, 7)
    while t < min(end, n / SR):
        _place(track, clip, t)
        t += len(clip) / SR + rng.uniform(0.2, 1.0)
    return Sound("ring_offscreen", _fade_end(track), "offscreen")


def _voice_track(rng: np.random.Generator, files: tuple[str, ...], n: int) -> Sound:
    """Real recorded words (the themes' channel announcements) with pauses, off screen."""
    track = np.zeros(n, np.float32)
    t = rng.uniform(0, 1)
    while t < n / SR - 0.5:
        clip = _theme(str(rng.choice(files)))
        _place(track, clip, t)
        t += len(clip) / SR + rng.uniform(0.3, 1.5)
    return Sound("voice_offscreen", _fade_end(track), "offscreen")


def envelope(audio: np.ndarray, times: np.ndarray, lag: float = 0.0) -> np.ndarray:
    """RMS in 40 ms windows (10 ms hop), smoothed, divided by its 98th percentile,
    sampled at ``times - lag``. float64 [len(times)], ~0..1 (may exceed 1)."""
    hop = SR // 100
    k = len(audio) // hop
    e = (audio[: k * hop].astype(np.float64) ** 2).reshape(k, hop).mean(axis=1)
    rms = np.sqrt(np.maximum(uniform_filter1d(e, 4), 0))
    rms = uniform_filter1d(rms, 3)
    ref = np.percentile(rms, 98)
    rms = rms / ref if ref > 0 else rms
    t = (np.arange(k) + 0.5) * hop / SR
    return np.interp(np.asarray(times) - lag, t, rms)


def _active_rms(x: np.ndarray) -> float:
    """RMS over the 40 ms frames where the sound is on (above 10 % of its loudest)."""
    hop = SR // 25
    k = len(x) // hop
    r = np.sqrt((x[: k * hop].astype(np.float64) ** 2).reshape(k, hop).mean(axis=1))
    on = r > 0.1 * r.max()
    return float(np.sqrt(np.mean(r[on] ** 2))) if on.any() else 1.0


# ============================================================================ pictures


@functools.lru_cache(maxsize=16)
def _photo(name: str) -> np.ndarray:
    import skimage.data as data

    img = getattr(data, name)()
    img = img[..., :3] if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img)


def _crop(rng: np.random.Generator, name: str, w: int, h: int) -> np.ndarray:
    """A random crop of a photo, resized to w x h, float32 RGB."""
    img = _photo(name)
    ph, pw = img.shape[:2]
    frac = rng.uniform(0.35, 0.8)
    ch = int(ph * frac)
    cw = min(pw, int(ch * w / h))
    y0, x0 = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
    out = cv2.resize(img[y0 : y0 + ch, x0 : x0 + cw], (w, h), interpolation=cv2.INTER_AREA)
    return out.astype(np.float32)


def _surface(
    rng: np.random.Generator,
    half: str,
    size: int,
    colour: tuple[float, float, float],
    contrast: float,
) -> np.ndarray:
    """A square texture: ``colour`` modulated by a photo's detail (float32 RGB)."""
    photo = _crop(rng, str(rng.choice(TEXTURES_BY_HALF[half])), size, size)
    g = photo.mean(axis=2)
    g = (g - g.mean()) / (g.std() + 1e-6)
    tint = photo / (photo.mean(axis=(0, 1)) + 1e-6)
    base = np.asarray(colour, np.float32) * (1 + 0.08 * (tint - 1))
    return np.clip(base * (1 + contrast * g[..., None]), 0, 255).astype(np.float32)


def _ellipse(
    cx: float, cy: float, ax: float, ay: float, t0: float = 0, t1: float = 2 * math.pi, k: int = 40
) -> np.ndarray:
    t = np.linspace(t0, t1, k)
    return np.stack([cx + ax * np.cos(t), cy + ay * np.sin(t)], axis=1)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)


# A shape is a list of (layer, polygon in object units: height 1, centre 0, y down).
# Layers: "body" (the surface texture), "jaw" (the surface moved with the jaw), "dark"
# (surface x 0.25), "light" (surface x 1.4), ("paint", rgb) (a colour with the detail).
Layer = str | tuple[str, tuple[int, int, int]]


def _shape(kind: str, rng: np.random.Generator) -> list[tuple[Layer, np.ndarray]]:
    if kind == "string":
        return [
            ("body", _ellipse(0, 0.22, 0.2, 0.2)),
            ("body", _ellipse(0, -0.06, 0.16, 0.16)),
            ("body", _rect(-0.045, -0.5, 0.045, 0.0)),
            ("body", _ellipse(0, -0.5, 0.06, 0.05)),
            ("dark", _rect(-0.03, -0.46, 0.03, 0.12)),
            ("dark", _ellipse(-0.09, 0.13, 0.015, 0.07)),
            ("dark", _ellipse(0.09, 0.13, 0.015, 0.07)),
            ("light", _rect(-0.08, 0.3, 0.08, 0.33)),
        ]
    if kind == "brass":
        bell = np.array([[0.5, -0.26], [0.5, 0.26], [0.12, 0.06], [0.12, -0.06]])
        return [
            ("body", bell),
            ("body", _rect(-0.5, -0.05, 0.14, 0.05)),
            ("body", _ellipse(-0.1, 0.0, 0.22, 0.16, k=30)),
            ("dark", _ellipse(-0.1, 0.0, 0.13, 0.08, k=30)),
            ("light", _rect(-0.2, -0.2, -0.16, -0.05)),
            ("light", _rect(-0.12, -0.2, -0.08, -0.05)),
            ("light", _rect(-0.04, -0.2, 0.0, -0.05)),
            ("dark", _ellipse(0.5, 0.0, 0.03, 0.24, k=20)),
        ]
    if kind == "wind":
        bell = np.array([[-0.07, 0.3], [0.07, 0.3], [0.14, 0.5], [-0.14, 0.5]])
        out: list[tuple[Layer, np.ndarray]] = [
            ("body", _rect(-0.06, -0.5, 0.06, 0.32)),
            ("body", bell),
        ]
        for y in np.linspace(-0.35, 0.25, 7):
            out.append(("light", _ellipse(0.0, float(y), 0.03, 0.025, k=12)))
        return out
    if kind == "keys":
        out = [
            ("body", _rect(-0.7, -0.3, 0.7, 0.3)),
            (("paint", (235, 232, 222)), _rect(-0.64, -0.02, 0.64, 0.26)),
        ]
        for x in np.linspace(-0.64, 0.64, 15)[1:-1]:
            out.append(("dark", _rect(float(x) - 0.006, -0.02, float(x) + 0.006, 0.26)))
        for i, x in enumerate(np.linspace(-0.6, 0.6, 14)):
            if i % 7 not in (2, 6):
                out.append(
                    (
                        ("paint", (25, 25, 28)),
                        _rect(float(x) - 0.025, -0.02, float(x) + 0.025, 0.13),
                    )
                )
        return out
    if kind == "bars":
        out = [("dark", _rect(-0.7, -0.3, 0.7, -0.25)), ("dark", _rect(-0.7, 0.22, 0.7, 0.27))]
        for i, x in enumerate(np.linspace(-0.6, 0.6, 9)):
            half = 0.36 - 0.02 * i
            out.append(("body", _rect(float(x) - 0.055, -half, float(x) + 0.055, half)))
        return out
    if kind == "drum":
        return [
            ("body", _rect(-0.38, -0.2, 0.38, 0.35)),
            ("body", _ellipse(0, 0.35, 0.38, 0.1)),
            (("paint", (225, 220, 205)), _ellipse(0, -0.2, 0.38, 0.12)),
            ("dark", _rect(-0.38, 0.05, 0.38, 0.09)),
        ]
    if kind == "block":
        return [
            ("body", _ellipse(0, 0, 0.42, 0.24)),
            ("dark", _rect(-0.25, -0.04, 0.25, 0.04)),
            ("light", _ellipse(-0.15, -0.12, 0.12, 0.05, k=16)),
        ]
    if kind == "blob":  # an irregular object: a ball, a plant, a toy
        t = np.linspace(0, 2 * np.pi, 90, endpoint=False)
        r = np.ones_like(t)
        for k in range(2, 6):
            r += rng.uniform(0.03, 0.14) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
        r = r / r.max() * 0.5
        pts = np.stack([r * np.cos(t) * rng.uniform(0.7, 1.2), r * np.sin(t)], axis=1)
        return [("body", pts), ("light", _ellipse(-0.12, -0.15, 0.1, 0.07, k=16))]
    raise ValueError(kind)


def _face_shape(jaw: float) -> list[tuple[Layer, np.ndarray]]:
    """A head (ellipse) whose part below the mouth line drops by ``jaw`` (object units)."""
    a, b, ym = 0.36, 0.5, 0.16
    tm = math.asin(ym / b)
    xm = a * math.cos(tm)
    upper = _ellipse(0, 0, a, b, math.pi - tm, 2 * math.pi + tm)
    lower = _ellipse(0, jaw, a, b, tm, math.pi - tm, k=24)
    hair = _ellipse(0, 0, a * 1.02, b * 1.02, math.pi + 0.35, 2 * math.pi - 0.35, k=24)
    out: list[tuple[Layer, np.ndarray]] = [("body", upper)]
    if jaw > 0.002:
        out.append(("body", _rect(-0.93 * xm, ym - 0.01, 0.93 * xm, ym + jaw + 0.01)))
    out += [
        ("jaw", lower),
        (("paint", (45, 30, 28)), hair),
        ("dark", _ellipse(-0.13, -0.08, 0.045, 0.03, k=16)),
        ("dark", _ellipse(0.13, -0.08, 0.045, 0.03, k=16)),
        ("dark", _rect(-0.015, -0.05, 0.015, 0.07)),
        (("paint", (60, 20, 25)), _ellipse(0, ym + jaw / 2, 0.11, max(jaw / 2, 0.008), k=20)),
    ]
    return out


def _smooth_noise(rng: np.random.Generator, n: int, hz: float) -> np.ndarray:
    """Unit-std noise with most of its motion below ``hz`` (per frame)."""
    sigma = FPS / (2 * math.pi * hz)
    x = gaussian_filter1d(rng.standard_normal(n + int(8 * sigma)), sigma)[:n]
    return x / (x.std() + 1e-9)


def _pulses(
    onsets: np.ndarray, times: np.ndarray, lag: float, tau: float, hz: float = 0.0
) -> np.ndarray:
    """Sum of strength * exp(-(t - onset) / tau) * cos(2 pi hz (t - onset)) after each
    onset (seen ``lag`` late): a decaying jolt, or with ``hz`` a damped wobble."""
    out = np.zeros(len(times))
    for t0, s in onsets:
        d = times - (t0 + lag)
        on = d >= 0
        out[on] += s * np.exp(-d[on] / tau) * np.cos(2 * np.pi * hz * d[on])
    return out


@dataclass
class Actor:
    """An on-screen object: how it is drawn and its pose in every frame."""

    name: str
    source: str | None
    shape: str  # face or a ``_shape`` kind
    height: float  # px
    surface: np.ndarray  # float32 [P, P, 3] at 2x, centred on the object
    cx: np.ndarray  # [F] world px (1x)
    cy: np.ndarray
    angle: np.ndarray  # degrees
    sx: np.ndarray  # scale
    sy: np.ndarray
    jaw: np.ndarray  # object units (faces)
    bright: np.ndarray  # multiplies the colours

    @functools.cached_property
    def surface_mean(self) -> float:
        return float(self.surface.mean()) + 1e-6


_SKIN = ((224, 172, 140), (198, 134, 98), (141, 85, 54), (238, 196, 165), (172, 112, 80))
_COLOURS = {
    "string": ((150, 78, 34), (185, 105, 50), (120, 60, 30)),
    "brass": ((212, 170, 62), (190, 150, 70)),
    "wind": ((40, 38, 42), (60, 50, 45), (200, 165, 70)),
    "keys": ((30, 28, 30), (80, 40, 25)),
    "bars": ((160, 95, 55), (130, 80, 50), (190, 190, 200)),
    "drum": ((170, 30, 35), (30, 60, 150), (200, 200, 205), (40, 110, 60)),
    "block": ((170, 110, 50), (200, 170, 60), (120, 75, 40)),
    "blob": ((60, 150, 70), (220, 120, 40), (90, 90, 200), (200, 60, 130), (220, 200, 60)),
}


def _actor(
    rng: np.random.Generator,
    half: str,
    name: str,
    sound: Sound | None,
    shape: str,
    home: tuple[float, float],
    height: float,
    times: np.ndarray,
) -> Actor:
    """An object at ``home`` (world px) whose motion follows ``sound`` the way it would."""
    n = len(times)
    colour = (
        _SKIN[rng.integers(len(_SKIN))]
        if shape == "face"
        else _COLOURS[shape][rng.integers(len(_COLOURS[shape]))]
    )
    side = int(4 * height) + 8
    surface = _surface(rng, half, side, colour, rng.uniform(0.12, 0.25))
    zeros, ones = np.zeros(n), np.ones(n)
    base_angle = 0.0 if shape in ("face", "keys", "bars", "drum") else rng.uniform(-25, 25)
    if shape == "wind" and rng.random() < 0.4:
        base_angle = 90 + rng.uniform(-10, 10)  # held sideways, like a flute
    a = Actor(
        name,
        sound.name if sound else None,
        shape,
        height,
        surface,
        home[0] + zeros,
        home[1] + zeros,
        base_angle + zeros,
        ones.copy(),
        ones.copy(),
        zeros.copy(),
        ones.copy(),
    )
    lag = rng.uniform(0.0, 0.08)
    # idle motion unrelated to any sound (a living head, a player's hands)
    idle = rng.uniform(0.2, 0.8) if shape == "face" else rng.uniform(0.05, 0.35)
    a.cx += idle * height * 0.04 * _smooth_noise(rng, n, rng.uniform(0.2, 0.7))
    a.cy += idle * height * 0.03 * _smooth_noise(rng, n, rng.uniform(0.2, 0.7))
    a.angle += idle * 4 * _smooth_noise(rng, n, rng.uniform(0.2, 0.6))
    if sound is None:  # a silent object moving on its own: drift, turn, grow, in bursts
        burst = np.clip(0.7 + 0.5 * _smooth_noise(rng, n, 0.15), 0.2, 1.5)
        a.cx += (
            height * rng.uniform(0.08, 0.16) * burst * _smooth_noise(rng, n, rng.uniform(0.3, 1.2))
        )
        a.cy += (
            height * rng.uniform(0.04, 0.1) * burst * _smooth_noise(rng, n, rng.uniform(0.3, 1.2))
        )
        a.angle += rng.uniform(8, 25) * burst * _smooth_noise(rng, n, rng.uniform(0.2, 1.0))
        s = 1 + rng.uniform(0.04, 0.12) * burst * _smooth_noise(rng, n, rng.uniform(0.2, 1.0))
        a.sx *= s
        a.sy *= s
        return a
    env = np.clip(envelope(sound.audio, times, lag), 0, 1.3)
    jitter = rng.uniform(0.0, 0.006) * height  # visual noise: small random twitches
    a.cx += jitter * rng.standard_normal(n)
    a.cy += jitter * rng.standard_normal(n)
    if sound.kind == "speech":
        a.jaw = rng.uniform(0.1, 0.2) * env ** rng.uniform(0.6, 1.0)
        if rng.random() < 0.4:  # some talkers nod a little as they talk
            a.cy += rng.uniform(0.005, 0.02) * height * env
    elif sound.kind == "percussion":
        hit = _pulses(sound.onsets, times, lag, rng.uniform(0.04, 0.08))
        cues = _pick(rng, ("jolt", "wobble", "squash"), str(rng.choice(("jolt", "squash"))))
        if "jolt" in cues:
            d = rng.uniform(0.08, 0.16) * height
            ang = math.radians(90 + rng.uniform(-35, 35))
            a.cx += d * math.cos(ang) * hit
            a.cy += d * math.sin(ang) * hit
        if "wobble" in cues:
            wobble = _pulses(sound.onsets, times, lag, rng.uniform(0.06, 0.1), rng.uniform(4, 7))
            a.angle += rng.uniform(5, 12) * wobble
        if "squash" in cues:
            q = rng.uniform(0.06, 0.15) * hit
            a.sy *= 1 - q
            a.sx *= 1 + q / 2
    elif sound.kind in ("bowed", "blown"):
        cues = _pick(rng, ("vibrate", "swell"), "vibrate")
        if "vibrate" in cues:
            v = rng.uniform(0.025, 0.05) * height * env
            a.cx += v * rng.standard_normal(n)
            a.cy += v * rng.standard_normal(n)
            a.angle += rng.uniform(1, 3) * env * rng.standard_normal(n)
        if "swell" in cues:
            s = 1 + rng.uniform(0.04, 0.1) * env
            a.sx *= s
            a.sy *= s
    else:  # struck or plucked pitched: pulses with the notes
        hit = _pulses(sound.onsets, times, lag, rng.uniform(0.08, 0.25))
        cues = _pick(rng, ("pulse", "glow"))
        if "pulse" in cues:
            s = 1 + rng.uniform(0.05, 0.12) * np.clip(hit, 0, 1.5)
            a.sx *= s
            a.sy *= s
        if "glow" in cues:
            a.bright = 1 + rng.uniform(0.15, 0.4) * env
    return a


def _pick(rng: np.random.Generator, cues: tuple[str, ...], always: str | None = None) -> set[str]:
    """One cue or several, at random (``always`` among them, when given)."""
    chosen = {c for c in cues if rng.random() < 0.5} | ({always} if always else set())
    return chosen or {str(rng.choice(cues))}


def _background(rng: np.random.Generator, half: str, w: int, h: int) -> np.ndarray:
    """A photo (tinted if grey), toned down a little so objects stand out, float32 RGB."""
    bg = _crop(rng, str(rng.choice(BACKGROUNDS_BY_HALF[half])), w, h)
    if np.allclose(bg[..., 0], bg[..., 1]):
        bg = bg * np.asarray(rng.uniform(0.75, 1.1, 3), np.float32)
    return np.clip(0.65 * bg + 0.35 * bg.mean(), 0, 255).astype(np.float32)


def _affine(a: Actor, i: int, p: int, jaw: float = 0.0) -> np.ndarray:
    """Surface patch px -> world px at 2x, for frame i (jaw: extra drop, object units)."""
    th = math.radians(a.angle[i])
    rs = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]]) @ np.diag(
        [a.sx[i], a.sy[i]]
    )
    c = np.array([p / 2, p / 2 - 2 * jaw * a.height])
    t = 2 * np.array([a.cx[i], a.cy[i]]) - rs @ c
    return np.hstack([rs, t[:, None]]).astype(np.float32)


def _polys(
    a: Actor, i: int, shape: list[tuple[Layer, np.ndarray]]
) -> list[tuple[Layer, np.ndarray]]:
    th = math.radians(a.angle[i])
    r = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    scale = np.diag([a.sx[i], a.sy[i]]) * a.height
    out = []
    for layer, pts in shape:
        world = 2 * (np.array([a.cx[i], a.cy[i]]) + pts @ scale @ r.T)
        out.append((layer, np.round(world * 8).astype(np.int32)))  # 3 fractional bits
    return out


def _draw(
    actors: list[Actor], shapes: dict[str, list], bg2: np.ndarray, i: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Frame i at 2x: the picture and each actor's visible (hard) mask, later actors in front.

    Each actor is drawn inside its bounding box only (warped surface, then its layers in
    order: later layers paint over earlier ones)."""
    h2, w2 = bg2.shape[:2]
    img = bg2.copy()
    visible: list[np.ndarray] = []
    for a in actors:
        shape = _face_shape(float(a.jaw[i])) if a.shape == "face" else shapes[a.name]
        polys = _polys(a, i, shape)
        pts = np.concatenate([q for _, q in polys]) / 8
        x0, y0 = (max(0, int(v) - 2) for v in pts.min(axis=0))
        x1, y1 = min(w2, int(pts[:, 0].max()) + 3), min(h2, int(pts[:, 1].max()) + 3)
        mask = np.zeros((h2, w2), bool)
        if x1 <= x0 or y1 <= y0:  # wholly outside the world
            visible.append(mask)
            continue
        rw, rh = x1 - x0, y1 - y0
        p = a.surface.shape[0]
        shift = np.array([[0, 0, x0], [0, 0, y0]], np.float32)
        tex = cv2.warpAffine(a.surface, _affine(a, i, p) - shift, (rw, rh))
        col = tex.copy()
        body = np.zeros((rh, rw), np.uint8)
        offset = np.array([x0 * 8, y0 * 8], np.int32)
        shades: dict[str, np.ndarray] = {}  # tex variants, made once per frame when needed
        for layer, q in polys:
            m = np.zeros((rh, rw), np.uint8)
            cv2.fillPoly(m, [q - offset], 1, lineType=cv2.LINE_8, shift=3)
            body |= m
            on = m.astype(bool)[..., None]
            if layer == "body":
                np.copyto(col, tex, where=on)
                continue
            key = layer if isinstance(layer, str) else "paint"
            if key not in shades:
                if key == "jaw":
                    m_jaw = _affine(a, i, p, float(a.jaw[i])) - shift
                    shades[key] = cv2.warpAffine(a.surface, m_jaw, (rw, rh))
                elif key == "dark":
                    shades[key] = tex * 0.25
                elif key == "light":
                    shades[key] = np.minimum(tex * 1.4, 255)
                else:  # detail of the surface, around 1
                    shades[key] = 0.85 + 0.15 * tex.mean(axis=2, keepdims=True) / a.surface_mean
            if key == "paint":
                np.copyto(col, np.asarray(layer[1], np.float32) * shades[key], where=on)
            else:
                np.copyto(col, shades[key], where=on)
        roi = body.astype(bool)
        np.copyto(img[y0:y1, x0:x1], np.minimum(col * a.bright[i], 255), where=roi[..., None])
        mask[y0:y1, x0:x1] = roi
        for v in visible:
            v[y0:y1, x0:x1] &= ~roi
        visible.append(mask)
    return img, visible


def _camera(rng: np.random.Generator, n: int, margin: float, moving: bool) -> np.ndarray:
    """World (1x) -> frame affine per frame [n, 2, 3]: a still crop, or pan plus shake."""
    cams = np.zeros((n, 2, 3))
    px = py = rot = np.zeros(n)
    if moving:
        px = 0.55 * margin * _smooth_noise(rng, n, rng.uniform(0.08, 0.2)).clip(-1.6, 1.6) / 1.6
        py = 0.35 * margin * _smooth_noise(rng, n, rng.uniform(0.08, 0.2)).clip(-1.6, 1.6) / 1.6
        shake = rng.uniform(0.05, 0.15) * margin
        px = px + shake * _smooth_noise(rng, n, 4.0).clip(-2, 2) / 2
        py = py + shake * _smooth_noise(rng, n, 4.0).clip(-2, 2) / 2
        rot = rng.uniform(0.3, 1.0) * _smooth_noise(rng, n, 1.5).clip(-2, 2) / 2
    for i in range(n):
        th = math.radians(rot[i])
        r = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
        cams[i, :, :2] = r
        cams[i, :, 2] = -r @ np.array([margin + px[i], margin + py[i]])
    return cams


# ============================================================================ recipes


def _recipe(
    spec: SceneSpec, rng: np.random.Generator, n: int
) -> list[tuple[Sound | None, str | None]]:
    """The clip's sounds, each with the shape of its on-screen object (None: off screen).
    A None sound with a shape is a silent object."""
    half, v = spec.half, spec.variant
    voices = list(VOICES_BY_HALF[half])
    rng.shuffle(voices)
    insts = INSTRUMENTS_BY_HALF[half]
    drums = DRUMS_BY_HALF[half]
    themes = THEMES_BY_HALF[half]

    def drum() -> tuple[Sound, str]:
        name = str(rng.choice(sorted(drums)))
        note, shape = drums[name]
        return _drum_track(rng, name, note, n), shape

    def solo(exclude: tuple[str, ...] = ()) -> tuple[Sound, str]:
        inst = insts[str(rng.choice(sorted(set(insts) - set(exclude))))]
        return _melody(rng, inst, n), inst.shape

    def offscreen(kind: str) -> tuple[Sound, None]:
        if kind == "ring":
            return _ring_track(rng, themes["ring"], n), None
        if kind == "voice":
            return _voice_track(rng, themes["voice"], n), None
        if kind == "music":
            s, _ = solo()
            s.name, s.kind = "music_offscreen", "offscreen"
            return s, None
        return _theme_track(
            rng, themes["ambience"], "ambience_offscreen", n, rng.uniform(0.35, 0.6)
        ), None

    r = spec.recipe
    if r == "speech+percussion":
        out = [(_speech(rng, voices[0], n, False), "face"), drum()]
        if v:
            out.append(offscreen("ambience"))
    elif r == "speech+offscreen":
        kinds = ["ambience", "voice", "music", "ring"]
        rng.shuffle(kinds)
        out = [(_speech(rng, voices[0], n, False), "face"), offscreen(kinds[0])]
        if v:
            out.append(offscreen(kinds[1]))
    elif r == "overlapping-voices":
        out = [
            (_speech(rng, voices[0], n, True), "face"),
            (_speech(rng, voices[1], n, True), "face"),
        ]
        if v:
            out.append(offscreen("ambience"))
    elif r == "similar-instruments":
        pairs = SIMILAR_PAIRS_BY_HALF[half]
        pair = pairs[(spec.seed // 37 + v) % len(pairs)]
        out = [(_melody(rng, insts[p], n), insts[p].shape) for p in pair]
    elif r == "instrument+offscreen":
        first = solo()
        out = [first]
        if v:
            out.append(solo(exclude=(first[0].name,)))
        out.append(offscreen("ring" if not v or rng.random() < 0.5 else "ambience"))
    elif r == "silent-object":
        if v:
            first = solo()
            out = [(None, "blob"), first, drum()]
        else:
            out = [
                (None, "blob"),
                (_speech(rng, voices[0], n, False), "face"),
                offscreen("ambience"),
            ]
    else:
        raise ValueError(f"unknown recipe {r}")
    names: set[str] = set()
    for s, _ in out:  # unique source names within a clip
        if s is not None:
            base, k = s.name, 2
            while s.name in names:
                s.name, k = f"{base}_{k}", k + 1
            names.add(s.name)
    return out


def make_scene(
    spec: SceneSpec | str,
    size: tuple[int, int] = SIZE,
    duration: float = DURATION,
    cache: bool = True,
) -> Scene:
    """One clip, ``size`` = (W, H) of the frames.

    Rendered clips are cached (uncompressed .npz, ~20 MB at 192x112) under a key made of
    this module's source, the spec, the size and the duration, so any change to the
    generator renders them anew.
    """
    if isinstance(spec, str):
        spec = SCENES_BY_NAME[spec]
    if not cache:
        return _render_scene(spec, size, duration)
    key = hashlib.sha1(
        Path(__file__).read_bytes() + repr((spec, tuple(size), duration)).encode()
    ).hexdigest()[:16]
    path = _cache_dir("separation-scenes") / f"{spec.name}-{size[0]}x{size[1]}-{key}.npz"
    if path.is_file():
        try:
            return _load_scene(spec, path)
        except (OSError, ValueError, KeyError):
            pass  # a torn or stale file: render again
    scene = _render_scene(spec, size, duration)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    masks = {f"mask:{k}": np.packbits(v, axis=-1) for k, v in scene.masks.items()}
    sources = {f"source:{k}": v for k, v in scene.sources.items()}
    prompts = json.dumps(scene.prompts)
    with open(tmp, "wb") as f:
        np.savez(
            f,
            mix=scene.mix,
            frames=scene.frames,
            times=scene.times,
            prompts=prompts,
            width=size[0],
            **masks,
            **sources,
        )
    os.replace(tmp, path)
    return scene


def _load_scene(spec: SceneSpec, path: Path) -> Scene:
    with np.load(path) as z:
        w = int(z["width"])
        masks = {
            k[5:]: np.unpackbits(z[k], axis=-1, count=w).astype(bool)
            for k in z.files
            if k.startswith("mask:")
        }
        sources = {k[7:]: z[k] for k in z.files if k.startswith("source:")}
        prompts = [(o, s) for o, s in json.loads(str(z["prompts"]))]
        return Scene(spec, z["mix"], sources, z["frames"], z["times"], masks, prompts)


def _render_scene(spec: SceneSpec, size: tuple[int, int], duration: float) -> Scene:
    rng = np.random.default_rng(spec.seed)
    n = int(round(duration * SR))
    nf = int(round(duration * FPS))
    times = np.arange(nf) / FPS
    parts = _recipe(spec, rng, n)

    # levels: equal loudness while sounding, then +-3 dB at random (within 6 dB of each other)
    sounds = [s for s, _ in parts if s is not None]
    levelled = {
        s.name: s.audio.astype(np.float64) / _active_rms(s.audio) * 10 ** (rng.uniform(-3, 3) / 20)
        for s in sounds
    }
    total = sum(levelled.values())
    peak = float(np.max(np.abs(total)))
    sources = {k: (x * 0.5 / peak).astype(np.float32) for k, x in levelled.items()}
    mix = np.sum([x.astype(np.float64) for x in sources.values()], axis=0).astype(np.float32)
    for s in sounds:  # drive the pictures with the levelled sound
        s.audio = sources[s.name]

    # the picture: a world a margin larger than the frame, seen through the camera
    w, h = size
    margin = round(0.12 * w)
    ww, wh = w + 2 * margin, h + 2 * margin
    onscreen = [(s, shape) for s, shape in parts if shape is not None]
    k = len(onscreen)
    slots = np.linspace(0.5 / k, 1 - 0.5 / k, k) if k > 1 else np.array([0.5])
    order = rng.permutation(k)
    actors, shapes, counts = [], {}, {}
    for j, (s, shape) in enumerate(onscreen):
        x = margin + w * (slots[order[j]] + rng.uniform(-0.04, 0.04))
        y = margin + h * rng.uniform(0.48, 0.6)
        height = h * (
            rng.uniform(0.42, 0.52)
            if shape == "face"
            else rng.uniform(0.36, 0.5) * (0.7 if shape in ("keys", "bars") else 1)
        )
        if k >= 3:
            height *= 0.85
        base = "face" if shape == "face" else (s.name if s is not None else "toy")
        counts[base] = counts.get(base, 0) + 1
        name = base
        if shape == "face":
            name = ("face_left", "face_mid", "face_right")[min(2, int(slots[order[j]] * 3))]
        if name in {a.name for a in actors}:
            name = f"{name}_{counts[base]}"
        a = _actor(rng, spec.half, name, s, shape, (x, y), height, times)
        actors.append(a)
        if shape != "face":
            shapes[name] = _shape(shape, rng)
    bg2 = _background(rng, spec.half, 2 * ww, 2 * wh)
    cams = _camera(rng, nf, margin, spec.camera)
    noise_sigma = rng.uniform(1.0, 3.0)
    frames = np.empty((nf, h, w, 3), np.uint8)
    masks = {a.name: np.zeros((nf, h, w), bool) for a in actors}
    for i in range(nf):
        img2, vis2 = _draw(actors, shapes, bg2, i)
        img = cv2.resize(img2, (ww, wh), interpolation=cv2.INTER_AREA)
        frame = cv2.warpAffine(
            img,
            cams[i].astype(np.float32),
            (w, h),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT,
        )
        frame += rng.normal(0, noise_sigma, frame.shape).astype(np.float32)
        frames[i] = np.clip(frame + 0.5, 0, 255).astype(np.uint8)
        for a, v in zip(actors, vis2, strict=True):
            cover = cv2.resize(v.astype(np.float32), (ww, wh), interpolation=cv2.INTER_AREA)
            cover = cv2.warpAffine(
                cover, cams[i].astype(np.float32), (w, h), flags=cv2.INTER_LINEAR
            )
            masks[a.name][i] = cover > 0.5
    prompts = [(a.name, a.source) for a in actors]
    return Scene(spec, mix, sources, frames, times, masks, prompts)
