"""Kubernetes (KubeRay) manifests in k8s/: rendering each RayService's serveConfigV2 from its
serving/*.yaml (render), and checking what kustomize builds against the KubeRay CRDs and the
Kubernetes schemas (validate)."""
