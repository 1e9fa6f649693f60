"""Renderers: views of the report dictionary. None of them computes anything new."""
