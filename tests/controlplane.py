"""A real Kubernetes control plane: etcd, kube-apiserver and kube-controller-manager on loopback, and
optionally kube-scheduler and one real node (tests/node.py) that runs pods from locally built images.

Started the way controller-runtime's envtest starts one, from the binaries that
hack/build-control-plane.sh builds at the versions pinned in hack/versions.env, with Knative Serving's
real CRDs installed from the pinned knative.dev/serving module.

    python tests/controlplane.py up --knative    # what `make cluster-up` runs; Ctrl-C tears it down
    python tests/controlplane.py up              # the cluster and its node, without Knative
    python tests/controlplane.py up --no-node    # the API server alone, on loopback (no root needed)

With --knative the node also runs CoreDNS, Knative Serving and Traefik (the test cluster's, tests/knative.py)
and the operator from the chart; the shared models are served to the node, and it prints the kubectl and
curl commands that run examples/modelservice-cpu.yaml by hand.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from node import Images, Node, NodeError
from pki import CertificateAuthority

from zeroserve.children import dies_with_parent

REPO_ROOT = Path(__file__).resolve().parent.parent
VERSIONS_FILE = REPO_ROOT / "hack" / "versions.env"
BUILD_HINT = "run `make control-plane` (hack/build-control-plane.sh) to build it"
ADMIN_USER = "zeroserve-admin"
SERVICE_CIDR = "10.96.0.0/24"
KUBERNETES_SERVICE_IP = "10.96.0.1"
# What a cluster with a node needs beyond the fast control plane: Ready nodes lose their not-ready
# taint, Services get endpoints, Deployments get pods, service-account token volumes get the cluster
# CA, Knative's aggregated roles get rules, and dead pods get collected.
NODE_CONTROLLERS = [
    "node-lifecycle-controller",
    "endpoints-controller",
    "endpointslice-controller",
    "endpointslice-mirroring-controller",
    "replicaset-controller",
    "deployment-controller",
    "root-ca-certificate-publisher-controller",
    "clusterrole-aggregation-controller",
    "pod-garbage-collector-controller",
    # Binds PersistentVolumeClaims, such as a ModelService's model cache claim, to their volumes.
    "persistentvolume-binder-controller",
]
LOG_TAIL_LINES = 40


class ControlPlaneError(RuntimeError):
    """The control plane could not be started, or a component of it died."""


def read_versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    versions = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            versions[key.strip()] = value.strip()
    return versions


def default_cache_dir() -> Path:
    if env := os.environ.get("ZEROSERVE_CACHE_DIR"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "zeroserve"


@dataclass(frozen=True)
class Binaries:
    """The pinned binaries and CRDs, checked to exist and to report the pinned versions."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubelet: Path
    kube_proxy: Path
    kubectl: Path
    helm: Path
    knative_crds: Path
    versions: dict[str, str]

    @classmethod
    def from_cache(cls, cache_dir: Path | None = None, versions: dict[str, str] | None = None) -> Binaries:
        cache_dir = cache_dir or default_cache_dir()
        versions = versions or read_versions()
        bin_dir = cache_dir / "bin"
        k8s, etcd, helm = versions["K8S_VERSION"], versions["ETCD_VERSION"], versions["HELM_VERSION"]
        expected = {
            "etcd": (["--version"], etcd.removeprefix("v")),
            "kube-apiserver": (["--version"], k8s),
            "kube-controller-manager": (["--version"], k8s),
            "kube-scheduler": (["--version"], k8s),
            "kubelet": (["--version"], k8s),
            "kube-proxy": (["--version"], k8s),
            "kubectl": (["version", "--client"], k8s),
            "helm": (["version", "--template", "{{.Version}}"], helm),
        }
        problems = []
        for name, (args, want) in expected.items():
            path = bin_dir / name
            if not os.access(path, os.X_OK):
                problems.append(f"{name} {want} is missing from {bin_dir}")
                continue
            got = subprocess.run([path, *args], capture_output=True, text=True, timeout=30).stdout
            if want not in got:
                problems.append(f"{name} at {path} reports {got.strip()!r}, but {want} is pinned")
        crds = cache_dir / "knative-serving-crds"
        knative = versions["KNATIVE_SERVING_VERSION"]
        if not crds.is_dir():
            problems.append(f"Knative Serving CRDs ({crds}) are missing")
        elif f"serving@{knative}" not in str(crds.resolve()):
            problems.append(f"{crds} points to {crds.resolve()}, but knative.dev/serving {knative} is pinned")
        if problems:
            raise ControlPlaneError(
                "The test control plane is not built: " + "; ".join(problems) + f". {BUILD_HINT}."
            )
        return cls(
            etcd=bin_dir / "etcd",
            kube_apiserver=bin_dir / "kube-apiserver",
            kube_controller_manager=bin_dir / "kube-controller-manager",
            kube_scheduler=bin_dir / "kube-scheduler",
            kubelet=bin_dir / "kubelet",
            kube_proxy=bin_dir / "kube-proxy",
            kubectl=bin_dir / "kubectl",
            helm=bin_dir / "helm",
            knative_crds=crds,
            versions=versions,
        )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# If the test process is killed outright, its finalizers never run; the kernel still kills these.
_die_with_parent = dies_with_parent(signal.SIGKILL)


@dataclass
class Component:
    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            with self.log_path.open(errors="replace") as f:
                return "".join(deque(f, maxlen=lines))
        except FileNotFoundError:
            return "(no log)"

    def stop(self, grace: float = 10.0) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


def _controller_flags(kubeconfig: Path, port: int) -> list[str]:
    """What kube-controller-manager and kube-scheduler share: one identity for the API and for checking
    their own callers, health on loopback, and no leader election (each runs once)."""
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        "--leader-elect=false",
    ]


@dataclass
class ControlPlane:
    """etcd, kube-apiserver and kube-controller-manager; with `images`, also kube-scheduler and one real
    node (tests/node.py) that runs pods from those images."""

    binaries: Binaries
    workdir: Path
    install_knative: bool = True
    images: Images | None = None
    components: list[Component] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    server: str = ""
    node: Node | None = field(init=False, default=None)
    kubeconfig: Path = field(init=False)
    ca_file: Path = field(init=False)
    admin_token: str = field(init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.kubeconfig = self.workdir / "kubeconfig"
        self.ca_file = self.workdir / "pki" / "ca.crt"
        self.admin_token = os.urandom(24).hex()
        if self.images is not None:
            self.node = Node(self.workdir / "node", self.images)

    @property
    def address(self) -> str:
        """Where the API server listens: loopback, or the node's bridge address so pods reach it."""
        return self.node.ip if self.node else "127.0.0.1"

    # -- lifecycle -------------------------------------------------------------------------------------

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, ready_timeout: float = 60.0) -> None:
        t0 = time.monotonic()
        try:
            self._start(ready_timeout)
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = time.monotonic() - t0

    def _start(self, ready_timeout: float) -> None:
        self.ca = ca = CertificateAuthority(self.workdir / "pki")
        address = self.address
        serving = ca.issue(
            "apiserver",
            "kube-apiserver",
            dns=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
            ips=tuple(dict.fromkeys(("127.0.0.1", address, KUBERNETES_SERVICE_IP))),
            server=True,
        )
        tokens = ca.directory / "tokens.csv"
        tokens.write_text(f"{self.admin_token},{ADMIN_USER},{ADMIN_USER},system:masters\n")
        tokens.chmod(0o600)
        (self.workdir / "logs").mkdir(exist_ok=True)
        if self.node:
            phase = time.monotonic()
            self.node.prepare_host()
            self.timings["host-network"] = time.monotonic() - phase

        etcd_port, etcd_peer, api_port, kcm_port = (free_port() for _ in range(4))
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        self.server = f"https://{address}:{api_port}"

        phase = time.monotonic()
        etcd = self.launch(
            "etcd",
            [
                str(self.binaries.etcd),
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=default=http://127.0.0.1:{etcd_peer}",
                # A test cluster is thrown away; fsync only slows every write.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._wait_http(etcd, f"{etcd_url}/health", ready_timeout)
        self.timings["etcd"] = time.monotonic() - phase

        node_flags = []
        if self.node:
            kubelet_client = ca.issue(
                "apiserver-kubelet-client",
                "kube-apiserver-kubelet-client",
                organizations=("system:masters",),
                client=True,
            )
            node_flags = [
                # The Node authorizer and NodeRestriction limit kubelet to its own node and pods.
                "--enable-admission-plugins=NodeRestriction",
                f"--kubelet-client-certificate={kubelet_client[0]}",
                f"--kubelet-client-key={kubelet_client[1]}",
                f"--kubelet-certificate-authority={ca.cert_file}",
                # Never resolve the node's name through the machine's DNS.
                "--kubelet-preferred-address-types=InternalIP",
            ]
        phase = time.monotonic()
        api = self.launch(
            "kube-apiserver",
            [
                str(self.binaries.kube_apiserver),
                f"--etcd-servers={etcd_url}",
                f"--bind-address={address}",
                f"--advertise-address={address}",
                f"--secure-port={api_port}",
                f"--cert-dir={ca.directory}",
                f"--tls-cert-file={serving[0]}",
                f"--tls-private-key-file={serving[1]}",
                f"--client-ca-file={ca.cert_file}",
                f"--authorization-mode={'Node,RBAC' if self.node else 'RBAC'}",
                f"--token-auth-file={tokens}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={ca.sa_pub_file}",
                f"--service-account-signing-key-file={ca.sa_key_file}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                "--v=1",
                *node_flags,
            ],
        )
        self._wait_http(api, f"{self.server}/readyz", ready_timeout)
        self.timings["kube-apiserver"] = time.monotonic() - phase
        self.write_kubeconfig(self.kubeconfig, ADMIN_USER, self.admin_token)

        phase = time.monotonic()
        controllers = ["garbagecollector", "namespace", "serviceaccount"]
        if self.node:
            controllers += NODE_CONTROLLERS
        kcm = self.launch(
            "kube-controller-manager",
            [
                str(self.binaries.kube_controller_manager),
                *_controller_flags(self.kubeconfig, kcm_port),
                f"--cert-dir={self.workdir / 'kcm-certs'}",
                f"--controllers={','.join(controllers)}",
                "--use-service-account-credentials=false",
                f"--root-ca-file={ca.cert_file}",
                "--v=1",
            ],
        )
        # kcm serves its own self-signed certificate; /healthz is an always-allowed path.
        self._wait_http(kcm, f"https://127.0.0.1:{kcm_port}/healthz", ready_timeout, verify=False)
        self.timings["kube-controller-manager"] = time.monotonic() - phase

        if self.node:
            phase = time.monotonic()
            self._start_scheduler(ready_timeout)
            self.timings["kube-scheduler"] = time.monotonic() - phase
            self.node.start(self)
            self.timings.update({f"node:{k}": v for k, v in self.node.timings.items()})

        if self.install_knative:
            phase = time.monotonic()
            self.install_knative_crds(ready_timeout)
            self.timings["knative-crds"] = time.monotonic() - phase

    def _start_scheduler(self, ready_timeout: float) -> None:
        d = self.workdir / "kube-scheduler"
        d.mkdir(exist_ok=True)
        kubeconfig = self.write_kubeconfig(
            d / "kubeconfig",
            "system:kube-scheduler",
            self.ca.issue("kube-scheduler", "system:kube-scheduler", client=True),
        )
        port = free_port()
        scheduler = self.launch(
            "kube-scheduler",
            [
                str(self.binaries.kube_scheduler),
                *_controller_flags(kubeconfig, port),
                "--v=1",
            ],
        )
        self._wait_http(scheduler, f"https://127.0.0.1:{port}/healthz", ready_timeout, verify=False)

    def stop(self) -> None:
        if self.node:
            # Nothing may recreate pods while kubelet stops them.
            for name in ("kube-controller-manager", "kube-scheduler"):
                if c := self.find(name):
                    c.stop()
            if self.find("kubelet") and not self.dead_components():
                self.node.drain(self)
        for component in reversed(self.components):
            component.stop()
        if self.node:
            self.node.cleanup(self.binaries.kube_proxy)

    # -- health ----------------------------------------------------------------------------------------

    def dead_components(self) -> list[Component]:
        return [c for c in self.components if c.exited() is not None]

    def check_alive(self) -> None:
        """Raise with each dead component's exit status and last log lines."""
        dead = self.dead_components()
        if dead:
            raise ControlPlaneError(self.describe_dead(dead))

    @staticmethod
    def describe_dead(dead: list[Component]) -> str:
        return "\n".join(
            f"{c.name} exited with status {c.exited()}; last log lines ({c.log_path}):\n{c.tail()}"
            for c in dead
        )

    def pids(self) -> list[int]:
        return [c.process.pid for c in self.components if c.process is not None]

    def component(self, name: str) -> Component:
        return next(c for c in self.components if c.name == name)

    def find(self, name: str) -> Component | None:
        return next((c for c in self.components if c.name == name), None)

    def raise_if_dead(self, component: Component) -> None:
        if component.exited() is not None:
            raise ControlPlaneError(self.describe_dead([component]))

    @staticmethod
    def free_port() -> int:
        return free_port()

    # -- helpers ---------------------------------------------------------------------------------------

    def launch(self, name: str, argv: list[str]) -> Component:
        component = Component(name, argv, self.workdir / "logs" / f"{name}.log")
        self.components.append(component)
        component.start()
        return component

    def _ssl_context(self, verify: bool = True) -> ssl.SSLContext:
        if not verify:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        return ssl.create_default_context(cafile=str(self.ca_file))

    def _wait_http(self, component: Component, url: str, timeout: float, verify: bool = True) -> None:
        deadline = time.monotonic() + timeout
        context = self._ssl_context(verify) if url.startswith("https") else None
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.admin_token}"})
        last = "no answer yet"
        while time.monotonic() < deadline:
            if component.exited() is not None:
                raise ControlPlaneError(self.describe_dead([component]))
            try:
                with urllib.request.urlopen(request, timeout=2, context=context) as response:
                    if response.status == 200:
                        return
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}: {e.read(300).decode(errors='replace')}"
            except OSError as e:
                last = str(e)
            time.sleep(0.1)
        raise ControlPlaneError(
            f"{component.name} was not ready at {url} within {timeout:.0f}s ({last}); "
            f"last log lines:\n{component.tail()}"
        )

    def write_kubeconfig(self, path: Path, user: str, credential: str | tuple[Path, Path]) -> Path:
        """A kubeconfig for this API server, authenticating with a bearer token or a client cert pair."""
        if isinstance(credential, str):
            auth: dict[str, str] = {"token": credential}
        else:
            auth = {"client-certificate": str(credential[0]), "client-key": str(credential[1])}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "zeroserve-test",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": base64.b64encode(self.ca_file.read_bytes()).decode(),
                    },
                }
            ],
            "users": [{"name": user, "user": auth}],
            "contexts": [{"name": "zeroserve-test", "context": {"cluster": "zeroserve-test", "user": user}}],
            "current-context": "zeroserve-test",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl against this control plane; a failure raises with kubectl's stderr."""
        result = subprocess.run(
            [str(self.binaries.kubectl), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            command = " ".join(args)
            raise ControlPlaneError(f"kubectl {command} failed ({result.returncode}):\n{result.stderr}")
        return result

    def get_json(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def apply_crds(self, files: list[Path], timeout: float = 60) -> None:
        """Server-side apply CRD manifests and wait until each is Established."""
        if not files:
            raise ControlPlaneError("no CRD manifests to apply")
        names = []
        for path in files:
            for doc in yaml.safe_load_all(path.read_text()):
                if doc and doc.get("kind") == "CustomResourceDefinition":
                    names.append(doc["metadata"]["name"])
        self.kubectl("apply", "--server-side", *(f"--filename={p}" for p in files))
        self.kubectl(
            "wait", "--for=condition=Established", f"--timeout={int(timeout)}s", *(f"crd/{n}" for n in names)
        )
        # Established comes before the API server serves the resource: until its storage is ready it
        # answers 429 "storage is (re)initializing". A successful list means objects can be created.
        deadline = time.monotonic() + timeout
        for name in names:
            while (
                got := self.kubectl("get", name, "--all-namespaces", "--request-timeout=5s", check=False)
            ).returncode:
                if time.monotonic() > deadline:
                    raise ControlPlaneError(
                        f"{name} is Established but cannot be listed: {got.stderr.strip()}"
                    )
                time.sleep(0.1)

    def install_knative_crds(self, timeout: float = 60) -> None:
        self.apply_crds(sorted(self.binaries.knative_crds.glob("*.yaml")), timeout)


# -- command line: make cluster-up -----------------------------------------------------------------------


def _knative_stack(plane: ControlPlane, workdir: Path, stack: contextlib.ExitStack) -> list[str]:
    """Knative, Traefik, CoreDNS and the operator on the running cluster, the shared models served to its
    node, and examples/modelservice-cpu.yaml made runnable here: the commands that try it."""
    import knative
    from modelhost import SHARED_MODELS, serve_models
    from pods import service_address
    from release import install_operator

    print("installing CoreDNS, Knative Serving and Traefik ...", flush=True)
    knative.install(plane)
    print("installing the operator from the chart (helm) ...", flush=True)
    install_operator(plane, "zeroserve", "zeroserve-system")
    base = stack.enter_context(serve_models(SHARED_MODELS))
    example = yaml.safe_load((REPO_ROOT / "examples" / "modelservice-cpu.yaml").read_text())
    name = example["metadata"]["name"]
    spec = example["spec"]
    # This machine has no S3 and a 2-CPU node: the model from the models served to the node, no
    # credentials, and a replica small enough to fit beside the system pods.
    spec["model"]["uri"] = f"{base}/efficientnet-lite0.onnx"
    spec["model"].pop("secretRef", None)
    spec["resources"]["cpu"] = "500m"
    spec["runtime"]["threads"] = 1
    manifest = workdir / "modelservice-cpu.yaml"
    manifest.write_text(
        "# examples/modelservice-cpu.yaml, with its model served from this machine and a replica that fits\n"
        "# the test node\n" + yaml.safe_dump(example, sort_keys=False)
    )
    request = workdir / "request.json"
    pixels = [0.5] * (3 * 224 * 224)
    request.write_text(
        json.dumps(
            {"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": pixels}]}
        )
    )
    ingress = service_address(plane, knative.TRAEFIK_NAMESPACE, "traefik")
    host = f"{name}.default.{knative.DOMAIN}"
    return [
        f"kubectl apply -f {manifest}",
        f"kubectl wait modelservice/{name} --for=condition=Ready --timeout=180s",
        f"curl -sS -H 'Host: {host}' -H 'Content-Type: application/json' -d @{request} "
        f"http://{ingress}/v2/models/{name}/infer | head -c 300; echo",
        "kubectl get modelservices,pods   # about 40 s after the last request: no pods (scale to zero)",
    ]


def main(argv: list[str]) -> int:
    if argv[1:] not in (["up"], ["up", "--no-node"], ["up", "--knative"]):
        print(__doc__)
        return 2
    with_node = "--no-node" not in argv
    with_knative = "--knative" in argv
    try:
        binaries = Binaries.from_cache()
        images = Images.from_cache(default_cache_dir()) if with_node else None
    except (ControlPlaneError, NodeError) as e:
        print(e, file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="zeroserve-cluster-"))
    plane = ControlPlane(binaries, workdir, images=images)
    stop = False

    def _on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    parts = "etcd, kube-apiserver, kube-controller-manager"
    if images:
        parts += ", kube-scheduler and a node (containerd, kubelet, kube-proxy)"
    print(f"starting {parts} ...", flush=True)
    stack = contextlib.ExitStack()
    try:
        plane.start()
        kubectl_dir = binaries.kubectl.parent
        print(f"cluster ready in {plane.timings['total']:.1f}s at {plane.server}")
        commands = _knative_stack(plane, workdir, stack) if with_knative else []
        print(f"logs: {workdir / 'logs'}\n")
        print(f"export KUBECONFIG={plane.kubeconfig} PATH={kubectl_dir}:$PATH")
        if images:
            # The images the node holds, for manifests and `helm install --set image...`.
            print(f"ZEROSERVE_OPERATOR_IMAGE={images.operator}")
            print(f"ZEROSERVE_RUNTIME_IMAGE={images.runtime}")
        if commands:
            print("\nKnative Serving, Traefik and the operator are running. Try a ModelService by hand:")
            for command in commands:
                print(f"  {command}")
        print()
        print("Press Ctrl-C to tear it down.", flush=True)
        while not stop:
            if plane.dead_components():
                print(plane.describe_dead(plane.dead_components()), file=sys.stderr)
                return 1
            time.sleep(0.5)
        return 0
    finally:
        stack.close()
        plane.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        print("cluster stopped.")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
