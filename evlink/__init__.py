"""evlink: a GraphQL API for EV charge state and confirmed charging control."""

__version__ = "0.1.0"
