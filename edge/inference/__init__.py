"""From a verified bundle to decisions: bundle and model loading, preprocessing, backends (registered by
provider name), the task kinds that decode outputs (registered by task name) and temporal smoothing.
Export imports this package so calibration and the accuracy gate run the device's own code."""
