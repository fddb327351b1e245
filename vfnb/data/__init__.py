"""Data: formats (original, processed, VerSe), checks, pre-processing, splits, SynthSpine, transforms, sampling."""
