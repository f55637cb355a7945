"""Running a search: the driver, the one trial lifecycle every engine follows, the engines
(Optuna; Ray Tune with ASHA or PBT) and where their studies are stored. docs/architecture.md
maps the modules."""
