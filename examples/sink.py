"""A sample sink: what a device-fed object looks like (see Client.bind_metrics)."""

from __future__ import annotations

from typing import Any

from continuum_mqtt import ActiveObject, active


class SampleSink(ActiveObject):
    """Keeps the sequence numbers of the samples it was fed, once each."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.last: dict[str, int] = {}
        self.duplicates = 0

    @active
    def ingest(self, sample: dict[str, Any]) -> None:
        """Take one metrics sample; a redelivered one (seq not above the last) is counted, not kept."""
        dev, seq = str(sample.get("dev", "")), int(sample["seq"])
        if seq <= self.last.get(dev, 0):
            self.duplicates += 1
            return
        self.last[dev] = seq
        self.seqs.append(seq)

    @active(readonly=True)
    def received(self) -> dict[str, Any]:
        return {"seqs": self.seqs, "duplicates": self.duplicates}
