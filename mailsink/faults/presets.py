"""One-key fault presets: the rejections applications most often have to survive.

Each is an ordinary rule (as a [[fault]] table would give), switched on and off from the TUI and
tried before the config file's rules.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

from mailsink.faults.rules import PRESET_PREFIX, Rule, parse_rule


@dataclass(frozen=True)
class Preset:
    key: str  # the key that toggles it on the Faults screen
    title: str
    table: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{PRESET_PREFIX} {self.title}"

    def rule(self) -> Rule:
        return parse_rule({"name": self.name, **self.table}, 0)


PRESETS: tuple[Preset, ...] = (
    Preset(
        "1",
        "530 auth required",
        {"stage": "mail", "reply": "530 5.7.0 Authentication required"},
    ),
    Preset(
        "2",
        "550 5.7.1 not permitted",
        {"stage": "rcpt", "reply": "550 5.7.1 Delivery not permitted"},
    ),
    Preset(
        "3",
        "452 4.5.3 too many rcpts (>1)",
        {
            "stage": "rcpt",
            "reply": "452 4.5.3 Too many recipients",
            "match": {"recipients_over": 1},
        },
    ),
    Preset(
        "4",
        "452 4.3.1 no storage",
        {"stage": "data", "reply": "452 4.3.1 Insufficient system storage"},
    ),
    Preset(
        "5",
        "421 closing, disconnect",
        {
            "stage": "mail",
            "action": "disconnect",
            "reply": "421 4.3.2 Service not available, closing transmission channel",
        },
    ),
)

BY_KEY = {preset.key: preset for preset in PRESETS}


@functools.cache
def preset_rules() -> tuple[Rule, ...]:
    """Every preset as a rule, switched off."""
    return tuple(dataclasses.replace(preset.rule(), enabled=False) for preset in PRESETS)
