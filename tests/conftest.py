"""The fixtures ``broker`` (one mosquitto for the session), ``cluster`` (a
gateway and node n1 hosting examples.counter under a fresh topic root) and
``bare_cluster`` (nothing started) come from the pytest plugin of
continuum_dev.testing (devtools/, installed by scripts/setup; docs/testing.md).
Their processes run in the repository root, with it on PYTHONPATH."""
