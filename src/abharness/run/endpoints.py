"""Per-endpoint scheduling: what the calls on one connection key share.

An endpoint is what `Provider.connection_key()` names: a base URL and the identity of
its credentials, or one loaded model. Arms and judges on it share:

- ``slots``: calls on the wire at once (its ``concurrency``). A slot is held only for
  an attempt, so a call waiting to retry, or waiting for its judge on another endpoint,
  holds none, and a judge on the arms' own endpoint cannot deadlock them;
- ``pending``: calls the producer may have started for it, so memory depends on the
  concurrency, not on the dataset's size;
- request and token limits;
- two kinds of `Circuit`: the endpoint's own (refused connections, silence before the
  first byte, a failed key) and one per model on it (5xx, cut streams, a model's 404),
  so a broken model behind a gateway stops only its own arms. A circuit stops when its
  credentials fail or it is down (it opened and the probe after the cool-down failed
  too); later calls through it are then not made, each recorded with the reason, at
  once. A model's circuit also holds its adaptive concurrency window (`run.window`);
- ``proven``: until it has answered once with anything but an auth or server error,
  one call at a time, so a wrong key or a dead server costs one call, not one per
  slot. Calls that queued for that first answer go out together once it comes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..errors import CallError
from ..providers import Provider
from .limits import EndpointLimits
from .retry import CircuitBreaker, RetryPolicy
from .window import ConcurrencyWindow

PENDING_PER_SLOT = 2


@dataclass
class Circuit:
    """Calls that fail together: an endpoint's, or one model's on it."""

    breaker: CircuitBreaker
    arms: list[str] = field(default_factory=list)
    stopped: CallError | None = None
    not_called: int = 0
    window: ConcurrencyWindow | None = None  # a model's: how many of its calls at once

    def stop(self, reason: CallError) -> None:
        if self.stopped is None:
            self.stopped = reason

    def failure_line(self) -> str | None:
        """One line for the run's summary when calls were not made here."""
        if self.stopped is None or not self.not_called:
            return None
        return (
            f"{', '.join(self.arms)}: {self.stopped.error_type}: {self.stopped}; stopped after "
            f"it, {self.not_called} further calls not made (resume makes them)"
        )


@dataclass
class Endpoint:
    key: str
    where: str  # the address, for messages
    concurrency: int
    limits: EndpointLimits
    circuit: Circuit
    slots: asyncio.Semaphore
    pending: asyncio.Semaphore
    policy: RetryPolicy
    models: dict[str, Circuit] = field(default_factory=dict)
    proven: bool = False
    gate: asyncio.Lock = field(default_factory=asyncio.Lock)
    in_flight: int = 0
    peak_in_flight: int = 0

    @property
    def breaker(self) -> CircuitBreaker:
        return self.circuit.breaker

    def model(self, name: str) -> Circuit:
        """The circuit of one model on this endpoint, made on first use."""
        circuit = self.models.get(name)
        if circuit is None:
            label = f"model {name} on {self.where}"
            breaker = CircuitBreaker(
                self.policy.circuit_threshold, self.policy.circuit_cooldown_s, label
            )
            window = ConcurrencyWindow(self.concurrency, label)
            circuit = self.models[name] = Circuit(breaker, window=window)
        return circuit

    def circuits(self) -> Iterator[Circuit]:
        yield self.circuit
        yield from self.models.values()


class Endpoints:
    """The run's endpoints by connection key, made on first use."""

    def __init__(self, policy: RetryPolicy, concurrency_cap: int | None = None) -> None:
        self.policy = policy
        self.concurrency_cap = concurrency_cap
        self._by_key: dict[str, Endpoint] = {}

    def of(
        self, provider: Provider, arm_id: str | None = None, model: str | None = None
    ) -> Endpoint:
        key = provider.connection_key()
        endpoint = self._by_key.get(key)
        if endpoint is None:
            slots = max(1, provider.max_concurrency())
            if self.concurrency_cap:
                slots = min(slots, self.concurrency_cap)
            rpm, tpm = provider.rate_limits()
            ceiling = provider.spec_limits()
            source = "spec" if any(ceiling) else "tier"
            where = provider.where()
            endpoint = self._by_key[key] = Endpoint(
                key,
                where,
                slots,
                EndpointLimits(rpm, tpm, ceiling=ceiling, source=source),
                Circuit(
                    CircuitBreaker(
                        self.policy.circuit_threshold,
                        self.policy.circuit_cooldown_s,
                        f"endpoint {where}",
                    )
                ),
                asyncio.Semaphore(slots),
                asyncio.Semaphore(slots * PENDING_PER_SLOT),
                self.policy,
            )
        if arm_id is not None:
            for circuit in (endpoint.circuit, endpoint.model(model) if model else None):
                if circuit is not None and arm_id not in circuit.arms:
                    circuit.arms.append(arm_id)
        return endpoint

    def __iter__(self) -> Iterator[Endpoint]:
        return iter(self._by_key.values())
