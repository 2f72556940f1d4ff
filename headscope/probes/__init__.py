"""Probes: capture (scoped hooks -> records) and interventions (head gates on z)."""
