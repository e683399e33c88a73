"""The dataset builder: extract -> validate -> lags -> split -> select -> datasets -> train ->
report, one module per step, wired by `pipeline` (options in `options`)."""

import os

# OpenMP's busy-waiting barriers collapse when the two cores are shared with other work:
# scikit-learn's HistGradientBoosting took 78 s for 50 iterations with 2 spinning threads on
# this machine under load, 5.6 s with passive waiting (5.1 s single-threaded). Read once, when
# the OpenMP runtime starts (the first scikit-learn fit), so set it before that; a user's own
# setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
