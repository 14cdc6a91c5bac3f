"""Read access to the committed state, for the node's API, the CLI and tests.

Answers come from the in-memory tables (the settled state), as copies, so a caller can
never change the state through a query. Ids are raw 32-byte keys here; rendering
them as text is the caller's business.
"""

from __future__ import annotations

from typing import Any

from ledger.rules import Rules
from ledger.state import Key, Row, State
from ledger.store import Store


class StateView:
    def __init__(self, state: State, rules: Rules, store: Store) -> None:
        self._state = state
        self._rules = rules
        self._store = store

    # ---- generic -------------------------------------------------------------------------

    def row(self, table: str, key: Key) -> Row | None:
        return self._state.get(table, key)

    def rows(self, table: str, prefix: tuple[Any, ...] = ()) -> list[tuple[Key, Row]]:
        return list(self._state.scan(table, prefix))

    def count(self, table: str) -> int:
        return self._state.count(table)

    def tables(self) -> list[str]:
        return sorted(self._rules.tables)

    # ---- commune facts -------------------------------------------------------------------

    def scalar(self, name: str) -> int:
        row = self._state.peek("scalars", name)
        return 0 if row is None else int(row["value"])

    def params(self) -> dict[str, int]:
        return {k: int(r["value"]) for k, r in self._state.scan("params")}

    def member(self, who: bytes) -> Row | None:
        return self._state.get("members", who)

    def members(self) -> list[bytes]:
        return self._state.keys("members")

    def is_member(self, who: bytes) -> bool:
        return self._state.has("members", who)

    def account(self, who: bytes) -> Row | None:
        return self._state.get("accounts", who)

    def balance(self, who: bytes) -> int:
        row = self._state.peek("accounts", who)
        return 0 if row is None else int(row["balance"])

    def arrears(self, who: bytes) -> int:
        row = self._state.peek("accounts", who)
        return 0 if row is None else int(row["arrears"])

    def dividends(self, who: bytes) -> list[tuple[int, int, int]]:
        """(period, amount, claimed_height) of every entitlement of `who`."""
        return [(k[1], int(r["amount"]), int(r["claimed_height"]))
                for k, r in self._state.scan("dividends", (who,))]

    def unclaimed_periods(self, who: bytes) -> list[int]:
        return [p for p, _a, claimed in self.dividends(who) if not claimed]

    def open_period(self) -> int:
        return self.scalar("period")

    def period(self, k: int) -> Row | None:
        return self._state.get("periods", k)

    def pool(self) -> int:
        return self.scalar("pool")

    def treasury(self) -> dict[str, Any]:
        return {"signers": self._state.keys("treasury_signers"),
                "threshold": self.scalar("treasury_threshold")}

    def proposal(self, pid: bytes) -> Row | None:
        return self._state.get("proposals", pid)

    def withdrawal(self, wid: bytes) -> Row | None:
        return self._state.get("withdrawals", wid)

    def treasury_action(self, aid: bytes) -> Row | None:
        return self._state.get("treasury_actions", aid)

    def application(self, who: bytes) -> Row | None:
        return self._state.get("applications", who)

    def flows(self) -> dict[str, int]:
        return {f: self.scalar(f) for f in ("deposits", "payouts", "acquisitions",
                                            "liquidations")}
