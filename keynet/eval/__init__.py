"""Evaluation suite: datasets, protocols (Key.Net HSequences, D2-Net MMA), detectors and reports."""
