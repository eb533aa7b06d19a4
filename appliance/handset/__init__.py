"""FXS: the AG1171 SLIC driver (ringing, hook, flash, pulse digits) on gpiozero pins.

A bare ``§N`` in these modules cites hw/ag1171.md.
"""
