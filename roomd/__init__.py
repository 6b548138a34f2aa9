"""roomd: meeting-room device monitor."""

__version__ = "0.1.0"
