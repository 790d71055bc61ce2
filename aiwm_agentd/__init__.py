"""aiwm-agentd: the daemon that turns a Linux VM into an AIWM-managed AI agent."""

__version__ = "0.1.0"
