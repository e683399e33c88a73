"""The dataset builder: extract -> validate -> lags -> split -> select -> datasets -> train ->
report, one module per step, wired by `pipeline` (options in `options`)."""
