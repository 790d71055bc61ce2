"""Development tools that never ship to VMs: the embedded AIWM-compatible dev controller.

Not part of the `aiwm-agentd` wheel or the .deb/.rpm (setup.cfg packages only `aiwm_agentd`); used from a
source checkout by `make run` and the tests. Its extra dependency (bcrypt) is in the `dev` extra.
"""
