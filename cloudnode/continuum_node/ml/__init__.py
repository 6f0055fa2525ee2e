"""Partitioned data as active objects, and the paper's distributed workload
(Section 6: Cascade SVM over blocks spread across backends), plus k-means.

A dataset is split into blocks, each a :class:`Block` resident on a node
(``continuum_mqtt.Dataset`` places and finds them); the per-block steps of an
algorithm run where each block lives, and a :class:`Driver` on a chosen node
merges their small results (node to node, never through the edge). The same
computation runs three ways with the same result for a seed:

* **active**: ``driver.cascade_svm(blocks)``: each block computes where it lives;
* **shipping**: ``driver.cascade_svm(blocks, ship=True)``: every block's
  points are fetched to the driver's node, which computes (a plain store);
* **one process**: :func:`cascade_svm_local` on the blocks in memory.

Arrays cross the wire as ``{"dtype", "shape", "data"}`` maps of raw
little-endian bytes (:mod:`._arrays`), never pickled. A node hosts the
classes with ``--module continuum_node.ml`` (extra ``ml``: scikit-learn,
numpy). See docs/datasets.md.
"""

from __future__ import annotations

from ..peer import NotOnANode, peer
from ._algorithms import SVMParams, cascade, make_points, svm_accuracy, svm_block, svm_merge
from ._arrays import pack, unpack
from ._block import Block
from ._driver import Driver
from ._errors import BadBlock, BlocksFailed
from ._local import accuracy, blocks_of, cascade_svm_local, kmeans_local, support_of

# The public class paths are ``continuum_node.ml.Block`` and ``continuum_node.ml.Driver``.
Block.__module__ = __name__
Driver.__module__ = __name__

__all__ = [
    "BadBlock",
    "Block",
    "BlocksFailed",
    "Driver",
    "NotOnANode",
    "SVMParams",
    "accuracy",
    "blocks_of",
    "cascade",
    "cascade_svm_local",
    "kmeans_local",
    "make_points",
    "pack",
    "peer",
    "support_of",
    "svm_accuracy",
    "svm_block",
    "svm_merge",
    "unpack",
]
