"""Trigger segments: customers who just did something worth an e-mail, refreshed in minutes."""
