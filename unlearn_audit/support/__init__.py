"""Plumbing every layer may use: memory budgets, progress, silencing libraries, resource peaks, number formatting."""
