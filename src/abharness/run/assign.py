"""Which arm answers a live request (`abharness serve`, SPEC §16), and whose it is.

`Assigner.arm_for` draws an arm by the spec's ``serve.split`` weights. With ``sticky:
user`` the draw is a pure function of the experiment's name and the subject, so a
subject gets the same arm on every request, across restarts and machines, and a
subject's arm changes only when the weights or the arm ids do. Without a subject (or
``sticky: none``) every request is drawn afresh.

`SubjectKey` hashes a subject for the database: HMAC-SHA256 under a key the database
never holds, so the stored hash cannot be reversed by trying likely user ids. The key
is ``ABHARNESS_SUBJECT_KEY``, else a random one kept in ``subject.key`` beside the
database (created once, mode 0600): the same subject has the same hash across
sessions, so the report can count subjects over several days.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import secrets
from pathlib import Path

SUBJECT_KEY_ENV = "ABHARNESS_SUBJECT_KEY"
_SCALE = float(2**64)


class Assigner:
    def __init__(self, experiment: str, split: dict[str, float], sticky: str = "user") -> None:
        self.experiment = experiment
        self.sticky = sticky
        total = sum(split.values())
        self.arms = list(split)
        edges, acc = [], 0.0
        for weight in split.values():
            acc += weight / total
            edges.append(acc)
        edges[-1] = 1.0
        self.edges = edges
        self._random = random.Random()

    def point(self, subject: str | None) -> float:
        """The subject's place in [0, 1): stable for a subject when sticky, else random."""
        if subject is None or self.sticky == "none":
            return self._random.random()
        digest = hashlib.sha256(f"{self.experiment}\0{subject}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / _SCALE

    def arm_for(self, subject: str | None) -> str:
        u = self.point(subject)
        for arm, edge in zip(self.arms, self.edges, strict=True):
            if u < edge:
                return arm
        return self.arms[-1]


class SubjectKey:
    """The key subjects are hashed under (never stored in the database)."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def for_db(cls, db: Path) -> SubjectKey:
        """``ABHARNESS_SUBJECT_KEY``, else ``subject.key`` beside `db`, made if missing."""
        configured = os.environ.get(SUBJECT_KEY_ENV)
        if configured:
            return cls(configured.encode())
        path = db.parent / "subject.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass  # another process made it first
            else:
                with os.fdopen(fd, "w") as out:
                    out.write(secrets.token_hex(32))
        return cls(path.read_text(encoding="utf-8").strip().encode())

    def hash(self, subject: str | None) -> str | None:
        if subject is None:
            return None
        return hmac.new(self._key, subject.encode(), hashlib.sha256).hexdigest()[:32]
