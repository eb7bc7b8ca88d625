"""The names of the files in a job's folder, in one place.

Stages talk to each other only through these files (see ``worker/stages/__init__.py``); each
stage module lists the ones it reads and writes. Outputs keep the names ``sonomask separate``
has always written (``target.wav``, ``masks.npz`` ...): plugins depend on them.
"""

from __future__ import annotations

SPEC = "spec.json"  # the job as asked (JobSpec)
MANIFEST = "job.json"  # the job's record: state, progress, inputs, timings, outcome
PROBE = "probe.json"  # streams, sizes, clocks, the remux plan
AUDIO_SOURCE = "audio_source.wav"  # the chosen audio stream at its own rate and channels
AUDIO_MODEL = "audio_model.wav"  # its mono 48 kHz copy for the model
FRAMES = "frames.h264"  # every frame at the working size, lossless H.264 (arrays.VideoFrames)
FRAME_OFFSETS = "frame_offsets.npy"  # where each frame's packet starts in FRAMES (n + 1 int64)
FRAME_TIMES = "frame_times.npy"  # each frame's time on the picture's clock
MASKS = "masks.npz"  # output: uint8 [frames, h, w] at the source size, 1 = object
MASKS_WORK = "masks_work.bits.z"  # the tracked masks at the working size, each frame's packed
# rows deflated (worker/arrays.py deflate_masks / DeflatedMasks; open with stages.common.working_masks)
PROMPT_INDEX = "prompt_index.npy"  # which frame the model sees at each feature step
PROMPT_TIMES = "prompt_times.npy"
ACTIVITY = "activity.npz"  # the object's and the background's motion over time
WINDOWS_DIR = "windows"  # one finished file per separated window (resume point)
WINDOWS_PLAN = "windows.json"
STEMS_MODEL = ("stems_target.npy", "stems_residual.npy")  # mono 48 kHz, from the separator
TARGET = "target.wav"  # output: the object's sound
RESIDUAL = "residual.wav"  # output: everything else
PREVIEW = "preview.mp4"  # output: the mask over the picture, target audio
PREVIEW_PICTURE = "preview_picture.mp4"  # the preview's picture, no sound (prompt stage)
MATTE = "matte.mov"  # output: the mask as a matte video at the source's timecode (matte_format)
# output: the timeline at the source's timecode, one file per JobSpec.timeline format
TIMELINES = {
    "otio": "timeline.otio",  # OpenTimelineIO
    "fcp7xml": "timeline.xml",  # FCP 7 XML (Premiere Pro, DaVinci Resolve)
    "fcpxml": "timeline.fcpxml",  # Final Cut Pro
    "edl": "timeline.edl",  # CMX 3600 (the picture's events)
}
OUTPUTS_DIR = "outputs"  # a queued job's published outputs

# Several objects (JobSpec.objects): each object's own files live in objects/<label>/ under
# the same names as the single object's (masks.npz, masks_work.bits.z, activity.npz,
# target.wav, isolated<ext>, removed<ext>); what they share stays at the top (frames,
# prompt_index, residual.wav, preview.mp4) and stems<ext> holds every stem as a track.
OBJECTS_DIR = "objects"
STEMS_TARGET = "stems_target.npy"  # an object's mono 48 kHz target, in its own folder
STEMS_STEM = "stems"  # output: stems.mov / stems.mkv, picture + one track per object + residual


def object_file(label: str, name: str) -> str:
    """``name`` in the folder of the object ``label`` (checked by ``spec.check_label``)."""
    return f"{OBJECTS_DIR}/{label}/{name}"


WORK_FORMAT = 6  # bump when a stage's files change meaning: old work folders are not resumed
