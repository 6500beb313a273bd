"""Reproduction reports: summary tables (CSV / Markdown / LaTeX) and learning-curve figures."""
