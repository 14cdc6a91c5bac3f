"""The extension points of the state machine, and the context a rule runs in.

Every rule of the commune is registered on one `Rules` object, assembled in one place
(`ledger/modules.py`), so that what a node enforces is a fixed list anyone can read:

- tables (`table`), each a typed declaration mirrored into SQLite;
- transaction handlers by kind (`on_tx`), run after the nonce check, inside a savepoint;
- treasury actions (`treasury_action`): the k-of-n mechanism of `ledger/treasury.py`
  checks a proposed action when it is proposed and runs it at the k-th approval;
- period-close steps (`on_period_close`) in DESIGN 6.5 order: rentals and rent (100),
  returns and re-auctions (200), the dividend split (300);
- start-of-block hooks (`on_block_start`) for time deadlines (auction closes, votes);
- arrears payees (`arrears_payee`): where a payment of arrears of a given kind goes;
- money holders (`money_holder`): every place money can wait, for the conservation check;
- genesis initializers (`on_genesis`) and member-leave hooks (`on_member_leave`).

Handlers get an `Exec`: the state, the block's height and time, the genesis, and
shortcuts. They reject with `TxRejected(reason)`; the executor rolls back whatever they
wrote. Anything they return (a small map of text to int/str) is the transaction's
recorded result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

from ledger.state import State, Table

if TYPE_CHECKING:
    from ledger.genesis import Genesis

Result = dict[str, Any] | None


class TxRejected(Exception):
    """A transaction that cannot execute now. `reason` is shown to its author."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Call(NamedTuple):
    """One transaction as a handler sees it (immutable; `args` is the handler's own copy)."""

    id: bytes
    signer: bytes
    kind: str
    nonce: int
    args: dict[str, Any]
    position: int
    """Its index in its block."""


class Exec:
    """What a rule may read and write: the state at one point of one block."""

    __slots__ = ("state", "rules", "genesis", "height", "time_ms", "get", "peek", "put",
                 "delete", "scan", "count", "has")

    def __init__(self, state: State, rules: Rules, genesis: Genesis, height: int,
                 time_ms: int) -> None:
        self.state = state
        self.rules = rules
        self.genesis = genesis
        self.height = height
        self.time_ms = time_ms
        self.get = state.get
        self.peek = state.peek
        self.put = state.put
        self.delete = state.delete
        self.scan = state.scan
        self.count = state.count
        self.has = state.has

    def param(self, name: str) -> int:
        row = self.state.peek("params", name)
        assert row is not None, f"unknown parameter {name}"
        return int(row["value"])

    def scalar(self, name: str) -> int:
        row = self.state.peek("scalars", name)
        return 0 if row is None else int(row["value"])

    def set_scalar(self, name: str, value: int) -> None:
        self.state.put("scalars", name, {"value": value})

    def next_seq(self, name: str) -> int:
        """A per-name counter from 1, for deterministic creation order of objects."""
        n = self.scalar("seq:" + name) + 1
        self.set_scalar("seq:" + name, n)
        return n

    @property
    def period(self) -> int:
        """The open period: the one the next close will close."""
        return self.scalar("period")

    @staticmethod
    def reject(reason: str) -> NoReturn:
        raise TxRejected(reason)


Handler = Callable[[Exec, Call], Result]
Check = Callable[[Exec, dict[str, Any]], None]
Execute = Callable[[Exec, bytes, dict[str, Any]], Result]
CloseStep = Callable[[Exec, int], None]
Hook = Callable[[Exec], None]
ArrearsPayee = Callable[[Exec, bytes, bytes, int], None]
"""(ex, debtor account, reference, amount paid)."""
MoneyHolder = Callable[[State], int]
GenesisInit = Callable[[Exec, "Genesis"], None]
LeaveHook = Callable[[Exec, bytes], None]
"""Runs when a member leaves (resigns or is expelled), after their row is removed."""


@dataclass(frozen=True)
class TreasuryAction:
    check: Check
    """Raises `TxRejected` if the action cannot run (at proposal and again at execution)."""
    execute: Execute
    """Runs the action; gets the action id (the proposing transaction's id) and its args."""


@dataclass
class Rules:
    """Registry of everything the state machine runs. Frozen once a ledger uses it."""

    tables: dict[str, Table] = field(default_factory=dict)
    handlers: dict[str, Handler] = field(default_factory=dict)
    treasury_actions: dict[str, TreasuryAction] = field(default_factory=dict)
    close_steps: list[tuple[int, str, CloseStep]] = field(default_factory=list)
    block_hooks: list[tuple[int, str, Hook]] = field(default_factory=list)
    arrears_payees: dict[str, ArrearsPayee] = field(default_factory=dict)
    money_holders: list[tuple[str, MoneyHolder]] = field(default_factory=list)
    genesis_inits: list[tuple[int, str, GenesisInit]] = field(default_factory=list)
    leave_hooks: list[tuple[int, str, LeaveHook]] = field(default_factory=list)
    frozen: bool = False

    def _mutable(self) -> None:
        assert not self.frozen, "rules are frozen once a ledger uses them"

    def table(self, name: str, key: list[tuple[str, type]] | tuple[tuple[str, type], ...],
              columns: list[tuple[str, type]] | tuple[tuple[str, type], ...],
              doc: str = "") -> Table:
        self._mutable()
        assert name not in self.tables, f"table {name} declared twice"
        t = Table(name, tuple(key), tuple(columns), doc)
        self.tables[name] = t
        return t

    def on_tx(self, kind: str, handler: Handler) -> None:
        from protocol.transactions import TX_KINDS

        self._mutable()
        assert kind in TX_KINDS, f"{kind} is not a transaction kind"
        assert kind not in self.handlers, f"handler for {kind} registered twice"
        self.handlers[kind] = handler

    register_handler = on_tx

    def treasury_action(self, kind: str, check: Check, execute: Execute) -> None:
        self._mutable()
        assert kind.startswith("treasury.") and kind not in self.treasury_actions
        self.treasury_actions[kind] = TreasuryAction(check, execute)

    def on_period_close(self, order: int, name: str, step: CloseStep) -> None:
        self._mutable()
        assert all(o != order for o, _, _ in self.close_steps), f"close order {order} taken"
        self.close_steps.append((order, name, step))
        self.close_steps.sort(key=lambda s: s[0])

    def on_block_start(self, order: int, name: str, hook: Hook) -> None:
        self._mutable()
        assert all(o != order for o, _, _ in self.block_hooks), f"hook order {order} taken"
        self.block_hooks.append((order, name, hook))
        self.block_hooks.sort(key=lambda s: s[0])

    def arrears_payee(self, kind: str, payee: ArrearsPayee) -> None:
        self._mutable()
        assert kind not in self.arrears_payees
        self.arrears_payees[kind] = payee

    def money_holder(self, name: str, holder: MoneyHolder) -> None:
        self._mutable()
        self.money_holders.append((name, holder))

    def on_genesis(self, order: int, name: str, init: GenesisInit) -> None:
        self._mutable()
        self.genesis_inits.append((order, name, init))
        self.genesis_inits.sort(key=lambda s: s[0])

    def on_member_leave(self, order: int, name: str, hook: LeaveHook) -> None:
        self._mutable()
        self.leave_hooks.append((order, name, hook))
        self.leave_hooks.sort(key=lambda s: s[0])

    def freeze(self) -> Rules:
        self.frozen = True
        return self

