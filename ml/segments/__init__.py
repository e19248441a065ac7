"""Segments: scoring with the champions, personas, consent, publication, audiences, readouts."""
