"""dialer: progressive outbound dialing on top of cloud call-center APIs."""

__version__ = "0.1.0"
