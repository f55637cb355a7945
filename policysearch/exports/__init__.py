"""Exporting a policy: the best trial picked from a study, written as policy YAML, albumentations
JSON or paste-ready Python source."""
