#!/usr/bin/env bash
# The e2e suite against real pods, on a host with Docker and kind:
# build the image, create (or reuse) a kind cluster, `kind load docker-image`, install the chart,
# run the e2e tests (including those marked `kind`), delete the cluster.
#
# Usage: e2e/kind/run.sh [pytest args...]
# Environment: KIND_CLUSTER (maitred-e2e), MAITRED_IMAGE (maitred:e2e),
#              MAITRED_NAMESPACE (maitred-system), KEEP_CLUSTER=1 to keep the cluster afterwards.
set -euo pipefail
cd "$(dirname "$0")/../.."

cluster="${KIND_CLUSTER:-maitred-e2e}"
image="${MAITRED_IMAGE:-maitred:e2e}"
release_namespace="${MAITRED_NAMESPACE:-maitred-system}"
helm="$(command -v helm || echo "$(e2e/build-binaries.sh --print-dir)/helm")"

for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool is required" >&2; exit 1; }
done

echo "--- building $image"
docker build -t "$image" .

if ! kind get clusters | grep -qx "$cluster"; then
  echo "--- creating kind cluster $cluster"
  kind create cluster --name "$cluster" --config e2e/kind/kind-config.yaml --wait 120s
fi
kubeconfig="$(mktemp)"
cleanup() {
  rm -f "$kubeconfig"
  [[ "${KEEP_CLUSTER:-}" == 1 ]] || kind delete cluster --name "$cluster"
}
trap cleanup EXIT
kind get kubeconfig --name "$cluster" >"$kubeconfig"

echo "--- loading $image into $cluster"
kind load docker-image "$image" --name "$cluster"

echo "--- installing charts/maitred into $release_namespace"
KUBECONFIG="$kubeconfig" "$helm" upgrade --install maitred charts/maitred \
  --namespace "$release_namespace" --create-namespace \
  --set image.repository="${image%:*}" --set image.tag="${image##*:}" --set image.pullPolicy=Never \
  --wait --timeout 5m

echo "--- running the e2e tests against $cluster"
# The pods reach this host's PostgreSQL at the kind network's gateway; the tests reach pods by their IPs.
network="$(docker network inspect kind -f '{{(index .IPAM.Config 0).Subnet}} {{(index .IPAM.Config 0).Gateway}}')"
MAITRED_E2E_KUBECONFIG="$kubeconfig" MAITRED_E2E_IMAGE="$image" MAITRED_E2E_NAMESPACE="$release_namespace" \
  MAITRED_E2E_POD_NETWORK="${network% *}" MAITRED_E2E_HOST_ADDRESS="${network#* }" \
  .venv/bin/python -m pytest -q -p no:cacheprovider e2e "$@"
