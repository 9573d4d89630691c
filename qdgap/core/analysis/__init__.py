"""What a trained ensemble says: prediction, FNA and its statistics, calibration, frame selection, comparison."""
