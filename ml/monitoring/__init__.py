"""Monitoring: drift of what the champions see and say, and alerts when a task fails."""
