"""Adapters that deliver journaled events to the outside world."""
