"""Who this node dials, when it dials them again, and whom it refuses.

Kept apart from the libp2p plumbing in `node/net.py` so that backoff, scoring
and banning are plain state driven by explicit time (`now`, in seconds of any
monotonic clock) and an injected `random.Random`: they are tested without
sockets, and a daemon can seed the jitter for reproducible runs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class DialTarget:
    """A peer this node wants a connection to, with its dial history."""

    addrs: list[str]
    persistent: bool
    failures: int = 0
    next_attempt: float = 0.0
    dialing: bool = False


@dataclass
class _Score:
    value: float = 0.0
    updated: float = 0.0
    reasons: list[str] = field(default_factory=list)


MAX_REASONS_KEPT = 8


class PeerBook:
    """Dial targets with capped, jittered exponential backoff; misbehaviour scores; bans.

    A target is dialled when it is not connected, not being dialled, not banned
    and its `next_attempt` has come. Each failure doubles the delay up to
    `backoff_max`; the delay is scaled by a factor drawn uniformly from
    [0.5, 1.0) so that nodes that lost the same peer do not redial in lockstep.
    Targets learned from other peers (not persistent) are forgotten after
    `max_failures_discovered` consecutive failures; bootstrap targets never are.

    Penalties add to a score that decays linearly by `score_decay_per_second`;
    a peer whose score reaches `ban_threshold` is banned for `ban_seconds`.
    """

    def __init__(
        self,
        *,
        max_targets: int,
        backoff_initial: float,
        backoff_max: float,
        ban_threshold: float,
        ban_seconds: float,
        score_decay_per_second: float,
        max_failures_discovered: int,
        rng: random.Random,
    ) -> None:
        assert max_targets > 0 and backoff_initial > 0 and backoff_max >= backoff_initial
        assert ban_threshold > 0 and ban_seconds > 0 and score_decay_per_second >= 0
        self.max_targets = max_targets
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.ban_threshold = ban_threshold
        self.ban_seconds = ban_seconds
        self.score_decay_per_second = score_decay_per_second
        self.max_failures_discovered = max_failures_discovered
        self._rng = rng
        self.targets: dict[str, DialTarget] = {}
        self._scores: dict[str, _Score] = {}
        self._bans: dict[str, float] = {}  # peer id -> ban expiry

    # -- dialling -------------------------------------------------------------

    def add_target(self, peer_id: str, addrs: list[str], *, persistent: bool, now: float) -> bool:
        """Remember a peer to keep connected; False if the book is full or nothing is new."""
        if not addrs:
            return False
        target = self.targets.get(peer_id)
        if target is not None:
            fresh = [a for a in addrs if a not in target.addrs]
            # Newest addresses first: a peer that moved is reached on the next attempt.
            target.addrs = (fresh + target.addrs)[: self._max_addrs]
            target.persistent = target.persistent or persistent
            return bool(fresh)
        if len(self.targets) >= self.max_targets:
            return False
        self.targets[peer_id] = DialTarget(
            addrs=list(dict.fromkeys(addrs))[: self._max_addrs],
            persistent=persistent,
            next_attempt=now,
        )
        return True

    _max_addrs = 8

    def backoff_delay(self, failures: int) -> float:
        """Delay before the next attempt after `failures` consecutive failures."""
        base = min(self.backoff_max, self.backoff_initial * (2.0 ** min(failures, 62)))
        return base * (0.5 + 0.5 * self._rng.random())

    def due(self, now: float, connected: set[str]) -> list[str]:
        """Targets to dial now; each is marked as being dialled until its outcome is told."""
        out = []
        for peer_id, target in self.targets.items():
            if target.dialing or peer_id in connected or self.is_banned(peer_id, now):
                continue
            if target.next_attempt <= now:
                target.dialing = True
                out.append(peer_id)
        return out

    def next_wakeup(self, now: float, connected: set[str]) -> float | None:
        """Earliest time a currently idle target becomes due, if any."""
        times = [
            max(t.next_attempt, self._bans.get(p, now))
            for p, t in self.targets.items()
            if not t.dialing and p not in connected
        ]
        return min(times) if times else None

    def addr_for_attempt(self, peer_id: str) -> str:
        """Rotate through a target's addresses so one stale address cannot block it forever."""
        target = self.targets[peer_id]
        return target.addrs[target.failures % len(target.addrs)]

    def dial_succeeded(self, peer_id: str) -> None:
        target = self.targets.get(peer_id)
        if target is not None:
            target.dialing = False
            target.failures = 0

    def dial_failed(self, peer_id: str, now: float) -> None:
        target = self.targets.get(peer_id)
        if target is None:
            return
        target.dialing = False
        target.failures += 1
        if not target.persistent and target.failures >= self.max_failures_discovered:
            del self.targets[peer_id]
            return
        target.next_attempt = now + self.backoff_delay(target.failures)

    def disconnected(self, peer_id: str, now: float) -> None:
        """A live connection dropped: try again soon, but not instantly and not all at once."""
        target = self.targets.get(peer_id)
        if target is not None and not target.dialing:
            target.next_attempt = now + self.backoff_delay(target.failures)

    # -- misbehaviour ---------------------------------------------------------

    def score(self, peer_id: str, now: float) -> float:
        entry = self._scores.get(peer_id)
        if entry is None:
            return 0.0
        return max(0.0, entry.value - (now - entry.updated) * self.score_decay_per_second)

    def reasons(self, peer_id: str) -> list[str]:
        entry = self._scores.get(peer_id)
        return list(entry.reasons) if entry else []

    def penalize(self, peer_id: str, weight: float, reason: str, now: float) -> bool:
        """Add a penalty; True exactly when this penalty bans the peer."""
        assert weight > 0
        value = self.score(peer_id, now) + weight
        entry = self._scores.setdefault(peer_id, _Score())
        entry.value, entry.updated = value, now
        entry.reasons = (entry.reasons + [reason])[-MAX_REASONS_KEPT:]
        if value >= self.ban_threshold and not self.is_banned(peer_id, now):
            self._bans[peer_id] = now + self.ban_seconds
            return True
        return False

    def is_banned(self, peer_id: str, now: float) -> bool:
        expiry = self._bans.get(peer_id)
        return expiry is not None and now < expiry

    def banned(self, now: float) -> list[str]:
        return sorted(p for p, expiry in self._bans.items() if now < expiry)

    def expire(self, now: float) -> list[str]:
        """Lift bans that ran out and forget fully decayed scores; returns the unbanned."""
        lifted = sorted(p for p, expiry in self._bans.items() if now >= expiry)
        for peer_id in lifted:
            del self._bans[peer_id]
            self._scores.pop(peer_id, None)
        for peer_id in [p for p in self._scores if self.score(p, now) == 0.0]:
            if peer_id not in self._bans:
                del self._scores[peer_id]
        return lifted
