"""Backbones, the LightningModule that trains them, schedules, and loading a checkpoint as checked data."""
