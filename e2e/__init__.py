"""End-to-end suites: a local Kubernetes control plane (controlplane.py) and the kind suite (kind/)."""
