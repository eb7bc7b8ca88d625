"""Rankers from config.json (reference ``create_ranker`` + ``parse_ranker_config``): the one
place that knows every ranker kind, so the rankers' own modules (``ranking``, ``judge``,
``clap``) need not know each other."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from model.sam_audio.clap import ClapRanker
from model.sam_audio.errors import ConfigError
from model.sam_audio.judge import DEFAULT_JUDGE_ID, JudgeRanker
from model.sam_audio.ranking import (
    EnsembleRanker,
    Ranker,
    SoundActivityRanker,
    UnavailableRanker,
)

logger = logging.getLogger(__name__)

_NOT_PORTED = ("imagebind",)


def create_ranker(config: Mapping[str, Any] | None) -> Ranker | None:
    """The ranker a config.json ``visual_ranker`` / ``text_ranker`` entry names (reference
    ``create_ranker(parse_ranker_config(...))``).

    ``sound_activity`` is built; ``judge`` and ``clap`` build ``model.sam_audio.judge.
    JudgeRanker`` / ``model.sam_audio.clap.ClapRanker`` (their weights load, local files only,
    on the first score); ``ensemble`` builds its members (``{"rankers": {name: [config,
    weight]}}``); ``imagebind`` gives an ``UnavailableRanker`` (loading works, scoring
    raises); an unknown kind gives None with a warning, as the reference's parser returns None
    for it.
    """
    if config is None:
        return None
    config = dict(config)
    kind = config.pop("kind", None)
    if kind == "sound_activity":
        unknown = set(config) - {"threshold_mode", "sil_threshold", "metric"}
        if unknown:
            raise ConfigError(f"unknown sound_activity ranker field(s): {sorted(unknown)}")
        return SoundActivityRanker(**config)
    if kind == "ensemble":
        members = config.get("rankers")
        if not isinstance(members, Mapping) or not members:
            raise ConfigError("an ensemble ranker needs 'rankers': {name: [config, weight]}")
        rankers, weights = [], []
        for name, entry in members.items():
            try:
                sub, weight = entry
            except (TypeError, ValueError) as err:
                raise ConfigError(f"ensemble member {name!r} must be [config, weight]") from err
            ranker = create_ranker(sub)
            if ranker is None:
                raise ConfigError(f"ensemble member {name!r} names no ranker this port knows")
            rankers.append(ranker)
            weights.append(weight)
        return EnsembleRanker(rankers, weights)
    if kind == "judge":
        unknown = set(config) - {"checkpoint_or_model_id"}
        if unknown:
            raise ConfigError(f"unknown judge ranker field(s): {sorted(unknown)}")
        return JudgeRanker(config.get("checkpoint_or_model_id") or DEFAULT_JUDGE_ID)
    if kind == "clap":
        return ClapRanker.from_config(config)
    if kind in _NOT_PORTED:
        return UnavailableRanker(kind, config)
    logger.warning("unknown ranker kind %r in config; no ranker (as the reference)", kind)
    return None


__all__ = ["create_ranker"]
