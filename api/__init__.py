"""The webhook front door: verify, validate, then run the deploy playbook through ansible-runner."""

__version__ = "1.0.0"
