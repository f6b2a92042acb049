"""Operating the system locally: the `make up` stack and its pid files, a local Prometheus, the
tools the Kubernetes and monitoring checks install, and the Kubernetes services' generated values."""
