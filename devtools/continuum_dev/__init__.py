"""Development tools of continuum, outside what an edge install ships
(distribution continuum-mqtt-dev, folder devtools/ of the repository):

* :mod:`continuum_dev.cli`: the ``continuum`` command (``continuum up``,
  ``continuum demo``);
* :mod:`continuum_dev.demo` and :mod:`continuum_dev.report`: the paper's
  workload end to end and its report; :mod:`continuum_dev.baselines`: the
  one-process baselines it compares with;
* :mod:`continuum_dev.testing`: a local broker, a deployment spawner, probes,
  the toolkit's fakes and a pytest plugin (docs/testing.md).
"""

__all__: list[str] = []
