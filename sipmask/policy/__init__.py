"""Who may call: ACL-adjacent rules, rate limits, blacklists, direction, caps (policy/)."""

from sipmask.policy.admission import CallPolicy

__all__ = ["CallPolicy"]
