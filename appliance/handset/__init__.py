"""FXS: the AG1171 SLIC driver (ringing, hook, flash, pulse digits) on gpiozero pins."""
