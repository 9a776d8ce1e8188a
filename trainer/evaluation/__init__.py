"""Measuring a model: verification pairs, accuracy and thresholds, and the
`facestream eval` commands."""
