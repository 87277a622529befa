"""Storage adapters: one per kind of data, each over a real embedded engine."""
