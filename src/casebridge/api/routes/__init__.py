"""One router per user: cases (jobs), validation and bundles (EHR integrators), reports (analysts), health."""
