"""`load_rules(path) -> RuleSet`: read and validate `rules.yaml`.

Every problem is reported at once as `edge.errors.ConfigError(file, [(key_path, reason)])`,
e.g. ``rules[2].condition: unknown aggregate 'p96' (expected one of count, min, max, ...)``.
Checked: YAML shape and types, unknown keys, durations, window geometry, rule ids (required,
unique), window references, condition and clear syntax, clear overlapping the condition
(an alert that would fire and clear on the same value), placeholders and format specs of
message templates, and per-kind required keys.  See config/rules.yaml for the format.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import yaml

from edge.config import StrictModel
from edge.errors import ConfigError
from edge.rules.condition import Condition, overlap_example, parse_condition
from edge.rules.model import (
    DEFAULT_MESSAGES,
    RULE_KINDS,
    Matcher,
    Rule,
    RuleSet,
    names_for,
)
from edge.rules.template import Template, check_template
from edge.windows import AGGREGATES, WindowSpec, parse_duration_ms

Duration = Annotated[int, pydantic.BeforeValidator(parse_duration_ms)]
Severity = Literal["info", "warning", "critical"]
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


class WindowConfig(StrictModel):
    id: str
    kind: Literal["tumbling", "sliding"] = "tumbling"
    size: Duration
    slide: Duration | None = None
    lateness: Duration = 2_000
    idle_timeout: Duration = 2_000
    key_by: list[str] = ["device_id"]
    measurements: list[str] | None = None
    include_bad_quality: bool = False
    forget_after: Duration = 3_600_000


class MatchConfig(StrictModel):
    device: str = "*"
    measurement: str | None = None
    tags: dict[Literal["facility", "line", "zone"], str] = {}


class _RuleBase(StrictModel):
    id: str
    kind: str
    severity: Severity = "warning"
    message: str | None = None
    cooldown: Duration = 0


class ThresholdConfig(_RuleBase):
    kind: Literal["threshold"] = "threshold"
    window: str | None = None
    match: MatchConfig
    condition: str
    clear: str | None = None


class RateConfig(_RuleBase):
    kind: Literal["rate_of_change"]
    window: str | None = None
    match: MatchConfig
    limit: float = pydantic.Field(gt=0)
    clear_below: float | None = pydantic.Field(None, gt=0)
    for_windows: int = pydantic.Field(1, ge=1)


class StaleConfig(_RuleBase):
    kind: Literal["stale"]
    match: MatchConfig = MatchConfig()
    after: Duration = pydantic.Field(gt=0)


class BatteryConfig(_RuleBase):
    kind: Literal["low_battery"]
    match: MatchConfig = MatchConfig()
    below: float
    clear_above: float | None = None
    source: Literal["last", "window_min"] = "last"
    window: str | None = None


class BufferConfig(_RuleBase):
    kind: Literal["buffer_fill"]
    above_percent: float = pydantic.Field(gt=0, le=100)
    clear_below_percent: float | None = pydantic.Field(None, ge=0, le=100)


class UplinkConfig(_RuleBase):
    kind: Literal["uplink_down"]
    after: Duration = pydantic.Field(gt=0)


_MODELS: dict[str, type[_RuleBase]] = {
    "threshold": ThresholdConfig, "rate_of_change": RateConfig, "stale": StaleConfig,
    "low_battery": BatteryConfig, "buffer_fill": BufferConfig, "uplink_down": UplinkConfig,
}


class RulesFile(StrictModel):
    version: Literal[1] = 1
    windows: list[WindowConfig] = [WindowConfig(id="default", size="10s")]  # type: ignore[arg-type]
    rules: list[Any] = []


def _path(prefix: str, loc: tuple[Any, ...]) -> str:
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


def _pydantic_problems(exc: pydantic.ValidationError, prefix: str) -> list[tuple[str, str]]:
    problems = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling against the commented config/rules.yaml)"
        problems.append((_path(prefix, tuple(err["loc"])), msg))
    return problems


def _window_spec(cfg: WindowConfig) -> WindowSpec:
    if cfg.kind == "sliding" and cfg.slide is None:
        raise ValueError("slide: required for a sliding window")
    if cfg.kind == "tumbling" and cfg.slide not in (None, cfg.size):
        raise ValueError("slide: a tumbling window has no slide (use kind: sliding)")
    return WindowSpec(
        id=cfg.id, size_ms=cfg.size, slide_ms=cfg.slide if cfg.kind == "sliding" else None,
        lateness_ms=cfg.lateness, idle_timeout_ms=cfg.idle_timeout, key_by=tuple(cfg.key_by),
        measurements=frozenset(cfg.measurements) if cfg.measurements is not None else None,
        include_bad_quality=cfg.include_bad_quality, forget_after_ms=cfg.forget_after)


class _Compiler:
    def __init__(self, windows: dict[str, WindowSpec]) -> None:
        self.windows = windows
        self.problems: list[tuple[str, str]] = []

    def problem(self, path: str, reason: str) -> None:
        self.problems.append((path, reason))

    def window_ref(self, at: str, ref: str | None) -> str | None:
        if ref is None:
            if len(self.windows) == 1:
                return next(iter(self.windows))
            self.problem(f"{at}.window", "required when more than one window is defined "
                                         f"(defined: {', '.join(self.windows) or 'none'})")
            return None
        if ref not in self.windows:
            self.problem(f"{at}.window", f"unknown window {ref!r} "
                                         f"(defined: {', '.join(self.windows) or 'none'})")
            return None
        return ref

    def condition(self, path: str, text: str, names: tuple[str, ...]) -> Condition | None:
        try:
            return parse_condition(text, names)
        except ValueError as exc:
            self.problem(path, str(exc))
            return None

    def compile(self, at: str, cfg: _RuleBase) -> Rule | None:
        before = len(self.problems)
        kw: dict[str, Any] = {}
        fire = clear = None
        match = getattr(cfg, "match", None)
        if isinstance(match, MatchConfig):
            kw["matcher"] = Matcher(match.device, match.measurement,
                                    tuple(sorted(match.tags.items())))
        if isinstance(cfg, ThresholdConfig | RateConfig):
            assert isinstance(match, MatchConfig)
            if match.measurement is None:
                self.problem(f"{at}.match.measurement", f"required for {cfg.kind} rules (a "
                                                        "window holds one measurement)")
            kw["window"] = self.window_ref(at, cfg.window)
            spec = self.windows.get(kw["window"] or "")
            if (spec is not None and spec.measurements is not None
                    and match.measurement is not None
                    and match.measurement not in spec.measurements):
                self.problem(f"{at}.match.measurement",
                             f"window {spec.id!r} does not aggregate {match.measurement!r} "
                             f"(its measurements: {', '.join(sorted(spec.measurements))})")
        if isinstance(cfg, ThresholdConfig):
            fire = self.condition(f"{at}.condition", cfg.condition, AGGREGATES)
            if cfg.clear is not None:
                clear = self.condition(f"{at}.clear", cfg.clear, AGGREGATES)
                if fire is not None and clear is not None:
                    both = overlap_example(fire, clear)
                    if both is not None:
                        self.problem(f"{at}.clear",
                                     f"{cfg.clear!r} overlaps the condition {cfg.condition!r} "
                                     f"({fire.name} = {both:g} would fire and clear at once)")
            elif fire is not None:
                clear = Condition(fire.name, _negate(fire.op), fire.threshold, 1)
        elif isinstance(cfg, RateConfig):
            fire = Condition("abs_rate", ">", cfg.limit, cfg.for_windows)
            low = cfg.clear_below if cfg.clear_below is not None else cfg.limit
            if low > cfg.limit:
                self.problem(f"{at}.clear_below", f"must be <= limit ({cfg.limit:g})")
            clear = Condition("abs_rate", "<" if cfg.clear_below is not None else "<=", low)
        elif isinstance(cfg, BatteryConfig):
            fire = Condition("voltage", "<", cfg.below)
            high = cfg.clear_above if cfg.clear_above is not None else cfg.below
            if high < cfg.below:
                self.problem(f"{at}.clear_above", f"must be >= below ({cfg.below:g})")
            clear = Condition("voltage", ">=", high)
            kw["source"] = cfg.source
            if cfg.source == "window_min":
                kw["window"] = self.window_ref(at, cfg.window)
            elif cfg.window is not None:
                self.problem(f"{at}.window", "only used with source: window_min")
        elif isinstance(cfg, BufferConfig):
            fire = Condition("fill_percent", ">", cfg.above_percent)
            low = (cfg.clear_below_percent if cfg.clear_below_percent is not None
                   else cfg.above_percent)
            if low > cfg.above_percent:
                self.problem(f"{at}.clear_below_percent",
                             f"must be <= above_percent ({cfg.above_percent:g})")
            clear = Condition("fill_percent", "<" if cfg.clear_below_percent is not None
                              else "<=", low)
        elif isinstance(cfg, UplinkConfig):
            kw["after_ms"] = cfg.after
            fire = Condition("down_s", ">=", cfg.after / 1000)
            clear = Condition("down_s", "<", cfg.after / 1000)
        elif isinstance(cfg, StaleConfig):
            kw["after_ms"] = cfg.after
        text = cfg.message if cfg.message is not None else DEFAULT_MESSAGES[cfg.kind]
        names = names_for(cfg.kind, kw.get("source", "last"))
        why = check_template(text, names)
        if why is not None:
            self.problem(f"{at}.message", why)
        if len(self.problems) > before:
            return None
        return Rule(id=cfg.id, kind=cfg.kind, severity=cfg.severity,
                    message=Template(text, names), cooldown_ms=cfg.cooldown, fire=fire,
                    clear=clear, config=cfg.model_dump(mode="json"), **kw)


def _negate(op: str) -> str:
    return {">": "<=", ">=": "<", "<": ">=", "<=": ">", "==": "!=", "!=": "=="}[op]


def parse_rules(data: Any, *, file: str = "<rules>") -> RuleSet:
    """Validate already-parsed YAML.  Raises ConfigError listing every problem found."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(file, [("", "expected a mapping with 'windows' and 'rules', got "
                                      f"{type(data).__name__}")])
    try:
        top = RulesFile.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ConfigError(file, _pydantic_problems(exc, "")) from None
    problems: list[tuple[str, str]] = []
    windows: dict[str, WindowSpec] = {}
    for i, wcfg in enumerate(top.windows):
        try:
            spec = _window_spec(wcfg)
        except ValueError as exc:
            field, _, why = str(exc).partition(": ")
            problems.append((f"windows[{i}].{field}", why))
            continue
        if spec.id in windows:
            problems.append((f"windows[{i}].id", f"duplicate window id {spec.id!r}"))
        windows[spec.id] = spec
    compiler = _Compiler(windows)
    rules: list[Rule] = []
    first_use: dict[str, str] = {}
    for i, raw in enumerate(top.rules):
        at = f"rules[{i}]"
        if not isinstance(raw, dict):
            problems.append((at, f"expected a mapping, got {type(raw).__name__}"))
            continue
        kind = raw.get("kind", "threshold")
        if kind not in _MODELS:
            problems.append((f"{at}.kind", f"unknown kind {kind!r} (expected one of "
                                           f"{', '.join(RULE_KINDS)})"))
            continue
        rid = raw.get("id")
        if isinstance(rid, str):
            if not _ID.match(rid):
                problems.append((f"{at}.id", f"{rid!r} must be 1-64 of A-Z a-z 0-9 _ . - "
                                             "starting with a letter or digit"))
            elif rid in first_use:
                problems.append((f"{at}.id", f"duplicate id {rid!r} (first used by "
                                             f"{first_use[rid]})"))
            else:
                first_use[rid] = at
        try:
            cfg = _MODELS[kind].model_validate(raw)
        except pydantic.ValidationError as exc:
            problems += _pydantic_problems(exc, at)
            continue
        rule = compiler.compile(at, cfg)
        problems += compiler.problems
        compiler.problems.clear()
        if rule is not None:
            rules.append(rule)
    if problems:
        raise ConfigError(file, problems)
    return RuleSet(windows=windows, rules=tuple(rules), file=file)


def load_rules(path: str | os.PathLike[str]) -> RuleSet:
    """Read and validate a rules file.  Raises ConfigError naming file, key path and reason."""
    file = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(file, [("", f"cannot read file: {exc.strerror or exc}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(file, [("", f"invalid YAML at {where}: {problem}")]) from None
    return parse_rules(data, file=file)
