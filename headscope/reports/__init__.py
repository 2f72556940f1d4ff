"""Batch head-importance reports."""
