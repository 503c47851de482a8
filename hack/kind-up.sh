#!/usr/bin/env bash
# A local Zeroserve on kind, for a machine with Docker and internet access (not this test machine):
# creates the cluster from kind-config.yaml, installs Knative Serving and Kourier at pinned versions,
# turns on the config-features flags GPU ModelServices need, builds and loads the operator and runtime
# images, installs the chart and the example ModelService, and prints the URL to curl.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Knative v1.24 is the release of knative.dev/serving v0.51.0, whose CRDs the test suite runs against.
KNATIVE_VERSION=${KNATIVE_VERSION:-knative-v1.24.0}
KOURIER_VERSION=${KOURIER_VERSION:-knative-v1.24.0}
# Any ONNX model over https with an "input" FP32 [N,3,224,224] works; override MODEL_URI for yours.
MODEL_URI=${MODEL_URI:-https://github.com/onnx/models/raw/main/validated/vision/classification/mobilenet/model/mobilenetv2-12.onnx}
CLUSTER=zeroserve
TAG=0.1.0
release="https://github.com/knative"

for tool in kind kubectl docker helm; do
  command -v "$tool" >/dev/null || { echo "kind-up: $tool is required" >&2; exit 1; }
done

kind get clusters | grep -qx "$CLUSTER" || kind create cluster --config kind-config.yaml

kubectl apply -f "$release/serving/releases/download/$KNATIVE_VERSION/serving-crds.yaml"
kubectl apply -f "$release/serving/releases/download/$KNATIVE_VERSION/serving-core.yaml"
kubectl apply -f "$release/net-kourier/releases/download/$KOURIER_VERSION/kourier.yaml"
kubectl patch configmap/config-network -n knative-serving --type merge \
  -p '{"data":{"ingress-class":"kourier.ingress.networking.knative.dev"}}'
# Kourier's NodePort 31080 is what kind-config.yaml maps to localhost:8080.
kubectl patch service/kourier -n kourier-system --type merge \
  -p '{"spec":{"type":"NodePort","ports":[{"name":"http2","port":80,"nodePort":31080,"targetPort":8080}]}}'
kubectl patch configmap/config-domain -n knative-serving --type merge -p '{"data":{"127.0.0.1.sslip.io":""}}'
kubectl patch configmap/config-features -n knative-serving --type merge -p '{"data":{
  "kubernetes.podspec-nodeselector":"enabled",
  "kubernetes.podspec-tolerations":"enabled",
  "kubernetes.podspec-persistent-volume-claim":"enabled"}}'
kubectl wait --for=condition=Available deployment --all -n knative-serving --timeout=300s

docker build -f operator/Dockerfile -t "ghcr.io/zeroserve/operator:$TAG" .
docker build -f runtimes/onnx/Dockerfile -t "ghcr.io/zeroserve/runtime-onnx:$TAG" .
kind load docker-image --name "$CLUSTER" "ghcr.io/zeroserve/operator:$TAG" "ghcr.io/zeroserve/runtime-onnx:$TAG"

helm upgrade --install zeroserve charts/zeroserve --namespace zeroserve --create-namespace --wait
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
