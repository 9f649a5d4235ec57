"""Alert rules for a training run: a NaN or spiking loss, exploding gradients, a throughput drop, memory
over a limit. Each rule either warns (once, until the condition clears) or stops the run with a message
that says what was seen and what to change.

Rules are checked on numbers already reduced across ranks, so in a data-parallel run every rank reaches
the same verdict at the same step and they stop together.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass

from adapterhub.errors import AdapterHubError, OptionError
from adapterhub.settings import AlertRule  # defined beside MonitorSettings, which holds the rules

ACTIONS = ("warn", "stop")


class TrainingStopped(AdapterHubError):
    """A ``stop`` alert fired: training ended early and nothing was saved or pushed."""


RULES = {
    "nan": "the loss is NaN or infinite (no threshold; with 'warn' the step is skipped)",
    "loss_spike": "the loss is over THRESHOLD times the mean of the last 20 steps",
    "grad_norm": "the gradient norm (before clipping) is over THRESHOLD",
    "throughput_drop": "samples/s over the last 5 steps fall below THRESHOLD (a fraction) of the run's median",
    "memory_mb": "process memory (GPU: peak allocated) is over THRESHOLD MiB",
}
DEFAULT_RULES = (AlertRule("nan", None, "stop"), AlertRule("loss_spike", 4.0, "warn"))


def parse_alert(text: str) -> AlertRule:
    """``nan=stop``, ``loss_spike=3``, ``memory_mb=4000:stop``, ``throughput_drop=0.5:warn``."""
    name, _, value = text.partition("=")
    name = name.strip()
    if name not in RULES:
        raise OptionError(f"unknown alert {name!r} in --alert {text!r}; known alerts: {', '.join(RULES)}")
    threshold_text, _, action = value.partition(":")
    if name == "nan" and threshold_text in ACTIONS and not action:
        threshold_text, action = "", threshold_text
    action = action or ("stop" if name == "nan" else "warn")
    if action not in ACTIONS:
        raise OptionError(f"--alert {text!r}: the action must be 'warn' or 'stop', not {action!r}")
    if name == "nan":
        return AlertRule(name, None, action)
    try:
        threshold = float(threshold_text)
    except ValueError:
        raise OptionError(f"--alert {text!r}: {name} needs a number, e.g. --alert {name}=2") from None
    if not threshold > 0 or (name == "throughput_drop" and threshold >= 1):
        bound = "between 0 and 1" if name == "throughput_drop" else "above 0"
        raise OptionError(f"--alert {text!r}: the threshold must be {bound}")
    return AlertRule(name, threshold, action)


def merge_rules(rules: list[AlertRule]) -> list[AlertRule]:
    """The default rules, each replaced by a rule of the same name the user gave."""
    given = {rule.name: rule for rule in rules}
    return [given.pop(rule.name, rule) for rule in DEFAULT_RULES] + list(given.values())


@dataclass
class Alert:
    rule: AlertRule
    step: int
    message: str


class AlertChecker:
    """Tracks the recent losses and throughput and reports which rules a step breaks."""

    def __init__(self, rules: list[AlertRule]) -> None:
        self.rules = {rule.name: rule for rule in rules}
        self._losses: deque[float] = deque(maxlen=20)
        self._rates: list[float] = []
        self._active: set[str] = set()  # warn rules currently firing: warned once, quiet until they clear
        self.fired: list[Alert] = []

    def nonfinite_loss(self, step: int, loss: float) -> Alert | None:
        """The alert for a NaN/inf loss: its action says whether to skip the step (warn) or stop. A warn
        rule reports the first such step only; the run's result counts the skipped ones."""
        rule = self.rules.get("nan", AlertRule("nan", None, "stop"))
        if rule.action == "warn" and any(alert.rule.name == "nan" for alert in self.fired):
            return None
        alert = Alert(rule, step, f"alert nan at step {step}: the loss is {loss}; lower the learning rate, check the "
                                  "data, or load the base in a wider dtype")  # fmt: skip
        self.fired.append(alert)
        return alert

    def check(self, step: int, loss: float, grad_norm: float, samples_per_s: float, memory_mb: float) -> list[Alert]:
        """Alerts newly raised by a step with a finite loss (stop alerts always, warn alerts when they start firing)."""
        found = {
            name: why
            for name, why in self._reasons(loss, grad_norm, samples_per_s, memory_mb).items()
            if name in self.rules
        }
        self._losses.append(loss)
        self._rates.append(samples_per_s)
        new = []
        for name, why in found.items():
            rule = self.rules[name]
            if rule.action == "warn" and name in self._active:
                continue
            self._active.add(name)
            new.append(Alert(rule, step, f"alert {name} at step {step}: {why}"))
        self._active &= set(found)
        self.fired.extend(new)
        return new

    def _reasons(self, loss: float, grad_norm: float, samples_per_s: float, memory_mb: float) -> dict[str, str]:
        rules, reasons = self.rules, {}
        if "loss_spike" in rules and len(self._losses) >= 5:
            mean = statistics.fmean(self._losses)
            if mean > 0 and loss > rules["loss_spike"].threshold * mean:
                reasons["loss_spike"] = (f"loss {loss:.4g} is {loss / mean:.1f}x the mean of the last {len(self._losses)} "
                                         f"steps ({mean:.4g}); lower the learning rate or raise the warm-up")  # fmt: skip
        if "grad_norm" in rules and grad_norm > rules["grad_norm"].threshold:
            reasons["grad_norm"] = (
                f"gradient norm {grad_norm:.4g} is over {rules['grad_norm'].threshold:g}; lower the learning rate"
            )
        if "throughput_drop" in rules and len(self._rates) >= 10:
            median, recent = statistics.median(self._rates[2:]), statistics.fmean([*self._rates[-4:], samples_per_s])
            if recent < rules["throughput_drop"].threshold * median:
                reasons["throughput_drop"] = (f"{recent:.1f} samples/s over the last 5 steps is under "
                                              f"{rules['throughput_drop'].threshold:g} of the run's median {median:.1f}; "
                                              "is another job competing for the device?")  # fmt: skip
        if "memory_mb" in rules and memory_mb > rules["memory_mb"].threshold:
            reasons["memory_mb"] = (f"memory {memory_mb:.0f} MiB is over the limit of {rules['memory_mb'].threshold:g} MiB; "
                                    "lower --batch-size or --max-length, or load the base quantized")  # fmt: skip
        return reasons
