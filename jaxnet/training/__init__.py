"""The trainer behind train.py: configs, models, compiled steps, devices, checkpoints and logs."""
