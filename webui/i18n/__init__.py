"""en / zh message catalogs."""
