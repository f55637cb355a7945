"""Search engines and the driver that runs them (Optuna now; Ray Tune in search/ray_engine.py)."""
