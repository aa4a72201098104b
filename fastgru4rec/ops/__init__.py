"""Functional ops: each has a plain-torch reference and (where one exists) a fast path behind
the same function, chosen with ``backend=``. Ops know nothing of modules or training."""
