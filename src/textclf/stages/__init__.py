"""The DVC stages: download, preprocess, train, evaluate; each a main() reading params.yaml and a function tests call."""
