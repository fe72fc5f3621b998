"""Measurement and reporting: parameter counts and MACs now; gradients, latency and reports
as they land."""
