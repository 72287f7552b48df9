"""Processor sharing: jobs that run at once on one compute resource slow each other down.

Two resources use it: :class:`SharedHost`, the host's cores shared by CPU ranks (``Cluster(host_cores=...)``),
and :class:`SharedDevice`, one GPU whose compute stream and a second stream (an overlapped VAE decode) run
at once.

A job is an amount of *work*, the seconds it takes one device computing alone on an idle host. While n
jobs are in progress each advances at ``1 / cluster.host_slowdown(n)`` work-seconds per second, and the
rate is re-evaluated whenever a job starts or ends, so a rank that computes alone for part of a tick and
next to its peer for the rest is priced as such (a per-tick factor cannot express that partial overlap).

>>> import simpy
>>> from simulator.cluster import Cluster
>>> env = simpy.Environment()
>>> host = SharedHost(env, Cluster(Cluster.of("h100-sxm", 2).gpu, 2, host_cores=1))
>>> done = {}
>>> def job(name, at, work):
...     yield env.timeout(at)
...     yield host.run(work)
...     done[name] = env.now
>>> _ = env.process(job("a", 0.0, 1.0)), env.process(job("b", 0.5, 1.0))
>>> env.run()
>>> done   # a alone for 0.5 s, then both at half speed: a ends at 1.5, b alone again from there
{'a': 1.5, 'b': 2.0}
"""

from __future__ import annotations

from typing import Any

from simulator.cluster import Cluster

__all__ = ["SharedDevice", "SharedHost"]


class SharedHost:
    """The host's cores, shared by whichever devices compute at each instant (see the module docstring)."""

    def __init__(self, env: Any, cluster: Cluster) -> None:
        self.env = env
        self.cluster = cluster
        # The share of cores (interference apart): one entry per number of jobs computing at once.
        self._share = [cluster.host_share(n) for n in range(cluster.num_gpus + 3)]
        self._jobs: dict[int, list[Any]] = {}  # id -> [work left, interference, event]
        self._next_id = 0
        self._last = 0.0
        self._plan_id = 0

    def run(self, work: float, batch: int = 1) -> Any:
        """An event that fires when ``work`` seconds of alone-speed compute are done; ``batch`` (tasks in
        the forward) picks the interference the job suffers while others compute
        (``Cluster.interference``)."""
        ev = self.env.event()
        if work <= 0.0:
            ev.succeed()
            return ev
        self._advance()
        self._jobs[self._next_id] = [work, self._interference(batch), ev]
        self._next_id += 1
        self._plan()
        return ev

    def _interference(self, batch: int) -> float:
        return self.cluster.interference(batch)

    def _slowdown(self, interference: float) -> float:
        n = len(self._jobs)
        return self._share[min(n, len(self._share) - 1)] * (interference if n > 1 else 1.0)

    def _advance(self) -> None:
        now = self.env.now
        if self._jobs and now > self._last:
            elapsed = now - self._last
            for job in self._jobs.values():
                job[0] -= elapsed / self._slowdown(job[1])
        self._last = now

    def _plan(self) -> None:
        """Schedule a wake-up at the next job end; an earlier plan is superseded (its wake-up is ignored)."""
        self._plan_id += 1
        if not self._jobs:
            return
        first = min(self._jobs, key=lambda k: self._jobs[k][0] * self._slowdown(self._jobs[k][1]))
        job = self._jobs[first]
        wait = max(0.0, job[0]) * self._slowdown(job[1])
        plan = self._plan_id
        self.env.timeout(wait).callbacks.append(lambda _ev: self._wake(plan, first))

    def _wake(self, plan: int, first: int) -> None:
        if plan != self._plan_id:
            return
        self._advance()
        tol = 1e-12 * max(1.0, self.env.now)
        for k in [k for k, job in self._jobs.items() if k == first or job[0] <= tol]:
            self._jobs.pop(k)[2].succeed()
        self._plan()


class SharedDevice(SharedHost):
    """One GPU running two streams: while both have a job, each runs ``contention`` times slower (2.0 is
    plain time slicing, 1.0 a free overlap); alone, a job runs at full speed.

    >>> import simpy
    >>> env = simpy.Environment()
    >>> gpu = SharedDevice(env, 1.5)
    >>> done = {}
    >>> def job(name, work):
    ...     yield gpu.run(work)
    ...     done[name] = env.now
    >>> _ = env.process(job("compute", 1.0)), env.process(job("decode", 3.0))
    >>> env.run()
    >>> done  # both at 1/1.5 speed until compute ends at 1.5; decode has 2 s of work left, alone
    {'compute': 1.5, 'decode': 3.5}
    """

    def __init__(self, env: Any, contention: float) -> None:
        self.env = env
        self.contention = contention
        self._share = [1.0, 1.0, 1.0]
        self._jobs = {}
        self._next_id = 0
        self._last = 0.0
        self._plan_id = 0

    def _interference(self, batch: int) -> float:
        return self.contention

    def _slowdown(self, interference: float) -> float:
        return interference if len(self._jobs) > 1 else 1.0
