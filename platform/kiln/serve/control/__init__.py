"""Serving's control plane, run from a laptop or CI beside the cluster (never in a replica):

deploy.py    check a serving config against the registry, deploy it, wait until it runs
ingress.py   whether Serve's HAProxy routes to a deployment's replicas yet
status.py    requests per second, latency, queues and versions from the nodes' metrics
"""
