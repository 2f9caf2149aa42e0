"""scapecast: a real-time streaming avatar engine (see README.md and docs/design.md)."""

import os

# The per-frame linear algebra is small (53-unknown solves, 478-landmark products): OpenBLAS's thread pool
# costs far more than it saves and fights the pipeline's own threads (docs/solve.md has the measurement).
# Must happen before numpy is first imported; an explicit user setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
