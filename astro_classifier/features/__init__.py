"""Preprocessing shared by training, batch and stream: model inputs and light-curve features."""
