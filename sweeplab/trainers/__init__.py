"""One module per task, plus what they share: the fit loop, metrics, backbones, devices."""
