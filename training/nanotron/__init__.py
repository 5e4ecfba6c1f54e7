"""Bridge to Nanotron: a YAML config generator (config) and an exact checkpoint converter (convert)."""
