"""The local platform the quick start and the e2e tests run on: a throwaway PostgreSQL (postgres), a Kubernetes
control plane of plain processes (controlplane), a stand-in kubelet that runs a Deployment's pooler as a
process (kubelet), a real node of kubelet and containerd (node), and `maitred operator` as a process
(operator)."""
