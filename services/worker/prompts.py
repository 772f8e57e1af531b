"""Prompt templates per keyword: a KeywordEvent -> chat messages for the LLM.

A template file (YAML or JSON) looks like::

    system: "You are Wakeline, a voice assistant. Answer in one short sentence."
    max_tokens: 48
    default:
      user: "The user said '{keyword}'{in_room} on device {device_id} at {hhmm}."
    keywords:
      lights on:
        system: "You control the lights of the house."
        user: "The user said '{keyword}' in the {attr[room]}. Confirm briefly."
        max_tokens: 24

Fields available to `user` and `system`: keyword, device_id, edge_node, time (local ISO time
of the detection), hhmm (its local "HH:MM"), score, attributes (rendered "k=v, ..."),
attr[<name>] (one attribute; empty when absent), in_room (" in the <room>" when the device has a
`room` attribute, else empty), event_id, trace_id. Unknown fields render empty instead of
failing an event.
"""

from __future__ import annotations

import datetime as dt
import json
import string
from dataclasses import dataclass, field
from pathlib import Path

# The default model was trained on exactly this phrasing (llm/train/synth.py, format_keyword_event).
DEFAULT_SYSTEM = "You are Wakeline, a helpful voice assistant. Answer in one short sentence."
DEFAULT_USER = "The user said '{keyword}'{in_room} on device {device_id} at {hhmm}."


class _Blank(dict):
    def __missing__(self, key):
        return ""


class _Formatter(string.Formatter):
    def get_value(self, key, args, kwargs):
        return kwargs.get(key, "") if isinstance(key, str) else super().get_value(key, args, kwargs)


@dataclass
class Template:
    """One keyword's prompt: system and user format strings, and optional sampling overrides."""

    user: str = DEFAULT_USER
    system: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None


@dataclass
class PromptBook:
    """All templates: a default and per-keyword overrides (keyword text matched case-insensitively)."""

    system: str = DEFAULT_SYSTEM
    default: Template = field(default_factory=Template)
    keywords: dict[str, Template] = field(default_factory=dict)
    max_tokens: int | None = None

    @classmethod
    def load(cls, path: str | Path | None) -> PromptBook:
        """Read a YAML (.yaml/.yml) or JSON file; None gives the built-in defaults."""
        if path is None:
            return cls()
        p = Path(path)
        text = p.read_text()
        if p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
        return cls.from_dict(data, source=str(p))

    @classmethod
    def from_dict(cls, data: dict, source: str = "templates") -> PromptBook:
        """Build from a dict of the file's shape; raises ValueError naming the bad entry."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a mapping at the top level")

        def tpl(d, where) -> Template:
            if not isinstance(d, dict):
                raise ValueError(f"{source}: {where} must be a mapping")
            unknown = set(d) - {"user", "system", "max_tokens", "temperature"}
            if unknown:
                raise ValueError(f"{source}: {where} has unknown fields {sorted(unknown)}")
            return Template(user=d.get("user", DEFAULT_USER), system=d.get("system"),
                            max_tokens=d.get("max_tokens"), temperature=d.get("temperature"))

        kws = data.get("keywords") or {}
        return cls(system=data.get("system", DEFAULT_SYSTEM), default=tpl(data.get("default") or {}, "default"),
                   keywords={k.strip().lower(): tpl(v, f"keywords.{k}") for k, v in kws.items()},
                   max_tokens=data.get("max_tokens"))

    def template(self, keyword: str) -> Template:
        return self.keywords.get(keyword.strip().lower(), self.default)

    def render(self, event) -> tuple[list[dict], Template]:
        """Chat messages for a KeywordEvent, and the template used (for its sampling overrides)."""
        t = self.template(event.keyword)
        attrs = dict(event.attributes)
        when = dt.datetime.fromtimestamp(event.created_unix_ms / 1000 if event.created_unix_ms else 0).astimezone()
        fields = {"keyword": event.keyword, "device_id": event.device_id, "edge_node": event.edge_node,
                  "time": when.isoformat(timespec="seconds"), "hhmm": when.strftime("%H:%M"),
                  "in_room": f" in the {attrs['room']}" if attrs.get("room") else "", "score": f"{event.score:.2f}",
                  "attributes": ", ".join(f"{k}={v}" for k, v in sorted(attrs.items())),
                  "attr": _Blank(attrs), "event_id": event.event_id, "trace_id": event.trace_id}
        fmt = _Formatter()
        msgs = []
        system = t.system if t.system is not None else self.system
        if system:
            msgs.append({"role": "system", "content": fmt.vformat(system, (), fields).strip()})
        msgs.append({"role": "user", "content": fmt.vformat(t.user, (), fields).strip()})
        return msgs, t
