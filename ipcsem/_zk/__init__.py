"""ipcsem on Apache ZooKeeper: the same semaphores for processes on several machines.

    sem = ipcsem.Semaphore("gpu", capacity=8,
                           backend="zookeeper://zk1:2181,zk2:2181,zk3:2181/ipcsem")

The URL is ``zookeeper://host:port[,host:port...][/chroot][?session_timeout=S&connect_timeout=S]``
(chroot default ``/ipcsem``).  kazoo (``pip install 'ipcsem[zookeeper]'``) is
imported only when a connection is first made.  See docs/zookeeper.md for the
recipe, the fencing-token argument and the lease-loss guarantee.

Modules: ``_codec`` (what is stored, and its validation), ``_admission``
(the pure admission rule), ``_session`` (one session per URL, heartbeat and
lease deadline), ``_lease`` (leases, holds, the book of a process's holds),
``_handle`` (the recipe), ``_backend`` (names, create, unlink, reaping),
``_local`` (machine identity, pidfd reaper), ``_supervisor`` (a host's
watcher of local holders), ``server`` (real ZooKeeper servers for tests and
benchmarks).
"""
from __future__ import annotations

from .._backend import register
from ._backend import ZkBackend
from ._lease import ZkLease
from ._supervisor import LocalSupervisor, Recovery, watch_local_holders

register("zookeeper", ZkBackend)

__all__ = ["LocalSupervisor", "Recovery", "ZkBackend", "ZkLease", "watch_local_holders"]
