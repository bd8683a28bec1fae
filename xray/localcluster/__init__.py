"""The local Kubernetes cluster behind `make cluster-up`: a control plane built from Kubernetes' own Go modules,
one real node that runs containers, KWOK nodes for the shapes this machine cannot hold, and the images the node
needs, made without a registry. A user feature (the way envtest ships in controller-runtime); the tests import it.
"""
