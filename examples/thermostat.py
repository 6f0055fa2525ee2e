"""A typed application error: what a caller gets when an active method refuses.

``OutOfRange`` registers itself under the wire code ``thermostat.out_of_range``.
A caller that has imported this module gets an ``OutOfRange`` back (with its
``target``, ``low`` and ``high`` fields); one that has not gets a
``continuum_mqtt.RemoteError`` whose ``code`` is ``thermostat.out_of_range``.
"""

from __future__ import annotations

from continuum_mqtt import ActiveObject, ApplicationError, active


class OutOfRange(ApplicationError):
    """The requested temperature is outside the thermostat's range."""

    code = "thermostat.out_of_range"


class Thermostat(ActiveObject):
    """A set point that must stay within ``[low, high]`` degrees Celsius."""

    def __init__(self, low: float = 5.0, high: float = 30.0) -> None:
        if not low <= high:
            raise OutOfRange(f"low {low} is above high {high}", low=low, high=high)
        self.low, self.high = float(low), float(high)
        self.target = self.low

    @active
    def set(self, target: float) -> float:
        """Set the target temperature; refuses one outside the range."""
        if not self.low <= target <= self.high:
            raise OutOfRange(
                f"{target} is outside [{self.low}, {self.high}]",
                target=target,
                low=self.low,
                high=self.high,
            )
        self.target = float(target)
        return self.target

    @active(readonly=True)
    def get(self) -> float:
        """The current target."""
        return self.target
