"""The session domain: configuration, launch plan, phase rules and the reconciler that runs them."""
