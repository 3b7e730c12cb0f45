"""The corpus: download and data home, safe archive reading, text cleaning, encoded splits, the data module."""
