"""The one place where the commune's rules are assembled.

Order matters only where it is visible in the state: genesis initializers and hooks
carry explicit orders, so this list is about what exists, not when it runs. A module
exposes `install(rules)`. The assets, bonds and rentals module (issue 4) adds itself
here; federation later.
"""

from __future__ import annotations

from ledger import accounts, assets, core, dividends, governance, membership, money, treasury
from ledger.rules import Rules

MODULES = (core, money, membership, accounts, treasury, governance, dividends, assets)


def build_rules() -> Rules:
    rules = Rules()
    for module in MODULES:
        module.install(rules)
    return rules.freeze()


DEFAULT_RULES = build_rules()
