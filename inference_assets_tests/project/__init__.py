"""What the project says about itself: its docs' commands and layout, its comments and settings files, its safe
defaults, and `make bench` / `make gpu-check` still running."""
