"""Use a Counter from an edge process, or entirely locally.

    python -m examples.counter_demo local:                 # no broker, in-process
    python -m examples.counter_demo mqtt://127.0.0.1:1883  # offloaded to a node
    python -m examples.counter_demo URL ROOT               # under another topic root

The code is the same both ways; that is the point.
"""

from __future__ import annotations

import sys

import continuum_mqtt


def main(url: str, root: str = continuum_mqtt.DEFAULT_ROOT) -> list[int]:
    with continuum_mqtt.connect(url, root=root) as client:
        Counter = client.stub("examples.counter.Counter")
        c = Counter.create(start=10)
        out = [c.add(5), c.add()]
        steps: list[dict[str, int]] = []
        out.append(c.count_to.options(on_progress=steps.append)(3))
        out.append(len(steps))
        futures = [c.add.future(1) for _ in range(10)]
        out.append(max(f.result() for f in futures))
        out.append(c.get())
        client.delete(c)
    return out


if __name__ == "__main__":
    print(main(*sys.argv[1:3]) if len(sys.argv) > 1 else main("local:"))
