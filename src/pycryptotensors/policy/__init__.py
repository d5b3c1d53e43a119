"""Access policy: the Rego modules a file carries, evaluated with regorus in a sandboxed helper process."""

from .rego import PolicyDecision, check_policy, evaluate_policy, local_input

__all__ = ["PolicyDecision", "check_policy", "evaluate_policy", "local_input"]
