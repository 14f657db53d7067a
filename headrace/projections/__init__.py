"""Read models (phase 4): `runs_read` and `states_read`, folded from the events the runtime
publishes to `workflow.events` (fold.py), applied in store transactions (apply.py) by the
projector (headrace/runtime/projector.py)."""
