"""The 28 currency pairs of the feature store.

Named in the market's order of precedence EUR GBP AUD NZD USD CAD CHF JPY (the base currency is
the one earlier in that order), listed in that order too.
"""

from __future__ import annotations

CURRENCIES: tuple[str, ...] = ("EUR", "GBP", "AUD", "NZD", "USD", "CAD", "CHF", "JPY")

PAIRS: tuple[str, ...] = (
    "EURGBP", "EURAUD", "EURNZD", "EURUSD", "EURCAD", "EURCHF", "EURJPY",
    "GBPAUD", "GBPNZD", "GBPUSD", "GBPCAD", "GBPCHF", "GBPJPY",
    "AUDNZD", "AUDUSD", "AUDCAD", "AUDCHF", "AUDJPY",
    "NZDUSD", "NZDCAD", "NZDCHF", "NZDJPY",
    "USDCAD", "USDCHF", "USDJPY",
    "CADCHF", "CADJPY",
    "CHFJPY",
)  # fmt: skip

assert len(PAIRS) == 28 and PAIRS == tuple(
    a + b for i, a in enumerate(CURRENCIES) for b in CURRENCIES[i + 1 :]
), "PAIRS must be every pair of CURRENCIES, in order of precedence"
