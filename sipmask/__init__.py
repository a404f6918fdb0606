"""sipmask: a number-protection SIP back-to-back user agent for 700 privacy numbers."""

__version__ = "0.1.0"
