"""The performance channel: ADWINs over labelled outcomes' errors, one per outcome group.

A classifier's outcomes are tested by label, positives' errors apart from
negatives' (`outcome_group`); a regressor's together, as "all". Taking the label as
given does two things (ADR 0031):
- it removes the coin flip of which rows are positive, which in a pooled error buries
  a collapse of the ranking of a rare class (3 % positives: the pooled Brier score
  barely moves, the positives' errors rise by several times their noise);
- the share of each label among the labels that have arrived does not count. Frauds
  are usually labelled sooner than legitimate payments, so the first labels of a
  healthy model are rich in positives: a pooled error rises, and against the
  holdout it alarmed on 24-30 of 30 such control streams.

When the profile has the holdout's errors of a group, they are that ADWIN's oldest
part (`Adwin.anchor`): live errors are tested against them from the first outcomes
on, not only against earlier live outcomes, so a model that is worse than it
evaluated from the start is found too. Those ADWINs weigh errors by their κ and use
the exact (Bennett-Hoeffding) bound. Without a reference (a profile registered
before ADR 0031, or a model trained elsewhere) there is one group, "all", and
River's ADWIN over live errors only, as before. spec.adwin_delta is shared among
the groups (Bonferroni). An ADWIN saved before the groups existed is not restored:
a classifier's held 0/1 errors, and Brier errors following them would read as a
change.
"""

from __future__ import annotations

from typing import NamedTuple

from mlbus.driftstats._adwin import Adwin, AdwinChange, AdwinState
from mlbus.driftstats._models import OutcomeGroupStatus
from mlbus.driftstats._outcomes import ALL, metric_groups
from mlbus.profiles import PerformanceReference
from mlbus.spec import DriftSpec

ERROR = "error"
SPEC_CLOCK = 32
"""spec.adwin_delta is the confidence of one check every SPEC_CLOCK values (River's clock)."""


class PerformanceChange(NamedTuple):
    """A rise of one group's error: the result's feature name and the ADWIN cut."""

    feature: str
    change: AdwinChange


class PerformanceChannel:
    """Per outcome group, an ADWIN over its errors (see the module docstring)."""

    def __init__(self, reference: PerformanceReference | None, spec: DriftSpec) -> None:
        self.groups: tuple[str, ...] = (
            (ALL,) if reference is None else metric_groups(reference.metric)
        )
        share = spec.adwin_delta / len(self.groups)
        self._adwins: dict[str, Adwin] = {}
        for group in self.groups:
            errors = None if reference is None else reference.errors.get(group)
            if errors is None or errors.n == 0 or errors.mean is None or errors.std is None:
                self._adwins[group] = Adwin(share, clock=SPEC_CLOCK)
                continue
            adwin = Adwin(
                share, clock=SPEC_CLOCK, bound="bennett-hoeffding", dependence=errors.dependence
            )
            largest = max(abs(errors.min or 0.0), abs(errors.max or 0.0))
            adwin.anchor(errors.n, errors.mean, errors.std, largest)
            self._adwins[group] = adwin

    def observe(self, error: float, group: str, at: float) -> PerformanceChange | None:
        """One finite error of `group` (counted in "all" when this channel has only that
        group). A rise of that group's error, if its ADWIN found one."""
        name = group if group in self._adwins else ALL
        adwin = self._adwins.get(name)
        if adwin is None:
            return None
        change = adwin.add(error, at)
        if change is None or not change.increased:
            return None
        return PerformanceChange(ERROR if name == ALL else f"{ERROR}:{name}", change)

    def status(self) -> dict[str, OutcomeGroupStatus]:
        return {
            group: OutcomeGroupStatus(
                outcomes=adwin.seen,
                window=adwin.width,
                mean_error=adwin.mean,
                detections=adwin.detections,
                reference_error=None
                if adwin.reference is None
                else adwin.reference[1] / adwin.reference[0],
                reference_outcomes=0 if adwin.reference is None else adwin.reference[0],
            )
            for group, adwin in self._adwins.items()
        }

    def snapshot(self) -> dict[str, AdwinState]:
        return {group: adwin.snapshot() for group, adwin in self._adwins.items()}

    def restore(self, states: dict[str, AdwinState]) -> None:
        """Continue from saved ADWINs of the same groups; anything else starts afresh."""
        if set(states) == set(self._adwins):
            self._adwins = {group: Adwin.restore(states[group]) for group in self.groups}
