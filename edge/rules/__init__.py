"""Local alert rules: the rule language, the alert lifecycle and the engine — pure code.

* `load_rules(path) -> RuleSet` / `parse_rules(data)` (`loader`): read and validate
  `rules.yaml`; every problem is a `ConfigError(file, [(key_path, reason)])`.
* `RuleSet`, `Rule`, `Matcher` (`model`): the compiled, immutable rule set.
* `parse_condition`, `Condition` (`condition`): ``<aggregate> <op> <number> [for N windows]``.
* `Template` (`template`): message templates over a safe set of names.
* `AlertBook`, `Alert`, `AlertTransition` (`alerts`): firing -> acknowledged -> resolved.
* `StaleTracker` (`stale`): last-seen bookkeeping behind stale-sensor rules.
* `AlertEngine`, `Output`, `GatewayStatus`, `Reload` (`engine`): windows + rules + alerts
  behind `observe` / `advance` / `acknowledge` / `replace_rules` / `snapshot` / `restore`.

docs/alerts.md describes the rule language and the alert lifecycle.
"""

from edge.rules.alerts import Alert, AlertBook, AlertTransition
from edge.rules.condition import Condition, parse_condition
from edge.rules.engine import AlertEngine, GatewayStatus, Output, Reload, iso_ms
from edge.rules.loader import load_rules, parse_rules
from edge.rules.model import RULE_KINDS, SEVERITIES, Matcher, Rule, RuleSet
from edge.rules.template import Template

__all__ = ["RULE_KINDS", "SEVERITIES", "Alert", "AlertBook", "AlertEngine", "AlertTransition",
           "Condition", "GatewayStatus", "Matcher", "Output", "Reload", "Rule", "RuleSet",
           "Template", "iso_ms", "load_rules", "parse_condition", "parse_rules"]
