#!/usr/bin/env bash
# A local Zeroserve on kind, for a machine with Docker and internet access (not this test machine):
# creates the cluster from kind-config.yaml, installs Knative Serving at a pinned version with Traefik's
# Knative provider as its networking layer (hack/traefik-knative.yaml, the same file the test suite runs),
# turns on the config-features flags GPU ModelServices need, builds and loads the operator and runtime
# images, installs the chart and the example ModelService, and prints the URL to curl.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Knative v1.23 is the release of knative.dev/serving v0.50.0, the version the test suite runs.
KNATIVE_VERSION=${KNATIVE_VERSION:-knative-v1.23.0}
# Any ONNX model over https with an "input" FP32 [N,3,224,224] works; override MODEL_URI for yours.
MODEL_URI=${MODEL_URI:-https://github.com/onnx/models/raw/main/validated/vision/classification/mobilenet/model/mobilenetv2-12.onnx}
CLUSTER=zeroserve
TAG=0.1.0
# Knative resolves image tags to digests through their registry, except for registries in its skip
# list: kind.local is one, so images loaded into kind are used as they are.
REGISTRY=kind.local/zeroserve
release="https://github.com/knative"

for tool in kind kubectl docker helm; do
  command -v "$tool" >/dev/null || { echo "kind-up: $tool is required" >&2; exit 1; }
done

kind get clusters | grep -qx "$CLUSTER" || kind create cluster --config kind-config.yaml

kubectl apply -f "$release/serving/releases/download/$KNATIVE_VERSION/serving-crds.yaml"
kubectl apply -f "$release/serving/releases/download/$KNATIVE_VERSION/serving-core.yaml"
kubectl apply -f hack/traefik-knative.yaml
kubectl patch configmap/config-network -n knative-serving --type merge \
  -p '{"data":{"ingress-class":"traefik.ingress.networking.knative.dev"}}'
# Traefik's public entrypoint on NodePort 31080, which kind-config.yaml maps to localhost:8080.
kubectl patch service/traefik -n traefik --type merge \
  -p '{"spec":{"type":"NodePort","ports":[{"name":"http","port":80,"nodePort":31080,"targetPort":8080}]}}'
kubectl patch configmap/config-domain -n knative-serving --type merge -p '{"data":{"127.0.0.1.sslip.io":""}}'
kubectl patch configmap/config-features -n knative-serving --type merge -p '{"data":{
  "kubernetes.podspec-nodeselector":"enabled",
  "kubernetes.podspec-tolerations":"enabled",
  "kubernetes.podspec-persistent-volume-claim":"enabled"}}'
kubectl wait --for=condition=Available deployment --all -n knative-serving --timeout=300s
kubectl wait --for=condition=Available deployment/traefik -n traefik --timeout=300s

docker build -f operator/Dockerfile -t "$REGISTRY/operator:$TAG" .
docker build -f runtimes/onnx/Dockerfile -t "$REGISTRY/runtime-onnx:$TAG" .
kind load docker-image --name "$CLUSTER" "$REGISTRY/operator:$TAG" "$REGISTRY/runtime-onnx:$TAG"

helm upgrade --install zeroserve charts/zeroserve --namespace zeroserve --create-namespace --wait \
  --set image.repository="$REGISTRY/operator" --set image.tag="$TAG" \
  --set modelServiceDefaults.onnxImage="$REGISTRY/runtime-onnx:$TAG"
kubectl apply -f - <<YAML
apiVersion: zeroserve.dev/v1alpha1
kind: ModelService
metadata:
  name: demo
spec:
  model:
    uri: $MODEL_URI
  resources:
    cpu: "1"
    memory: 1Gi
  scaling:
    maxReplicas: 3
YAML
kubectl wait --for=condition=Ready modelservice/demo --timeout=600s

url=$(kubectl get modelservice demo -o jsonpath='{.status.url}')
echo
echo "Ready (scales to zero when idle): curl -H 'Host: ${url#http://}' http://localhost:8080/v2/models/demo"
