"""Data sources: where the examples come from (conf/data/<name>.yaml names one with _target_)."""
