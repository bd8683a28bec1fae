"""Kubernetes, as the project uses it: the kube API calls (kube), the job table and its rules (monitor), the
kustomizations (render), the checks before a step (preflight) and the cluster steps themselves (steps)."""
