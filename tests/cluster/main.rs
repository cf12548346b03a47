//! Cluster tests against the local control plane (real kube-apiserver, controller-manager, scheduler, kwok).
