"""Cluster jobs and scheduled post-disaster runs.

- ``submit``: region jobs through Ray's Job Submission API (and the in-process runner the
  scheduler uses with ``--local``);
- ``schedule``: find new post-event scenes in a STAC catalog, one job per scene, never twice;
- ``state``: the scheduler's memory between passes, under a file lock or a lease object;
- ``stac``: catalog search and the STAC item describing a finished job;
- ``storage``: staging scene assets and publishing outputs, on ``storage.Location``.
"""
