"""One real Kubernetes node on this machine: containerd, runc, the CNI bridge plugin, kubelet and kube-proxy.

The host side (a bridge, a firewall rule, sysctls) is made before the API server starts, because the
API server binds to the bridge's address so that pods reach it through the `kubernetes` Service.
Everything made here is recorded and removed on teardown, and the machine's sysctls are put back.

Settings this machine needs, each measured by a probe here (see ../shared/ENGINEERING.md §4b):
- containerd: Debian 12's 1.6.20 with runc 1.1.5. kubelet 1.35 still accepts containerd 1.6 (it warns
  that the runtime cannot report its cgroup driver and uses the configured one), and Debian's build
  installs from apt with no other source, so CI needs no extra build. `restrict_oom_score_adj`
  because CAP_SYS_RESOURCE is not in this machine's bounding set: without it runc fails with "can't
  get final child's PID from pipe".
- cgroup v1 and no systemd: kubelet's `failCgroupV1: false` and the cgroupfs driver on both sides.
- kubelet refuses a loopback node IP, so the node's address is the bridge's gateway address.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from controlplane import ControlPlane

BRIDGE = "zs-br0"
POD_CIDR = "10.244.0.0/24"
NODE_IP = "10.244.0.1"
NODE_NAME = "zeroserve-node"
# The kube-dns Service's address in the cluster's service range (tests/knative.py runs CoreDNS there).
CLUSTER_DNS_IP = "10.96.0.10"
CNI_BIN_DIR = Path("/usr/lib/cni")
# Every host rule we add carries this comment, so teardown finds exactly ours.
RULE_COMMENT = "zeroserve-test-node"
# A documentation address (TEST-NET-3): never routed anywhere, used to prove nothing leaves the bridge.
OFF_BRIDGE_PROBE = "203.0.113.7"
CGROUP_ROOT = "zeroserve-node"
LOCK_FILE = Path("/run/zeroserve-test-node.lock")
# Fixed places (one node per machine, under LOCK_FILE), so that the next start finds and removes what a
# node killed outright left behind. Sockets go under /run: their paths are limited to 108 bytes.
STATE_DIR = Path("/run/zeroserve-node")
DATA_DIR = Path("/var/lib/zeroserve-node")
# Host sysctls kubelet, kube-proxy or the bridge plugin change; teardown writes back what it found.
SYSCTLS = (
    "vm/overcommit_memory",
    "kernel/panic",
    "kernel/panic_on_oops",
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
)
APT_PACKAGES = {
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "iptables": "iptables",
    "ip": "iproute2",
}


class NodeError(RuntimeError):
    """The node could not be started or cleaned up."""


def missing_host_tools() -> list[str]:
    """What the node needs from the host, as `tool (apt package)`; empty when everything is there."""
    missing = [
        f"{tool} (apt-get install {pkg})" for tool, pkg in APT_PACKAGES.items() if not shutil.which(tool)
    ]
    for plugin in ("bridge", "host-local", "portmap"):
        if not (CNI_BIN_DIR / plugin).exists():
            missing.append(f"CNI plugin {CNI_BIN_DIR / plugin} (apt-get install containernetworking-plugins)")
    if os.geteuid() != 0:
        missing.append("root (the node runs containerd and kubelet)")
    return missing


@dataclass(frozen=True)
class Images:
    """The locally built images (hack/build-images.sh): references by name (pause, runtime-onnx,
    operator, knative-activator, traefik, ...) and the docker archive holding each."""

    refs: dict[str, str]
    archives: dict[str, Path]

    REQUIRED = ("pause", "runtime-onnx", "operator")
    HINT = "run `make images` (hack/build-images.sh) to build them"

    @classmethod
    def from_cache(cls, cache_dir: Path) -> Images:
        images_dir = cache_dir / "images"
        env_file = images_dir / "images.env"
        if not env_file.is_file():
            raise NodeError(f"the node's images are not built: {env_file} is missing; {cls.HINT}")
        refs, archives = {}, {}
        for line in env_file.read_text().splitlines():
            key, _, ref = line.partition("=")
            if not (key.startswith("ZEROSERVE_") and key.endswith("_IMAGE")) or key == "ZEROSERVE_BASE_IMAGE":
                continue
            # The archive is named after the image's repository: kind.local/zeroserve/<name>:<tag>.
            name = ref.rsplit(":", 1)[0].rsplit("/", 1)[1]
            if (images_dir / f"{name}.tar").is_file():
                refs[name] = ref
                archives[ref] = images_dir / f"{name}.tar"
        if missing := [n for n in cls.REQUIRED if n not in refs]:
            raise NodeError(f"the node's images are not built: {', '.join(missing)} missing; {cls.HINT}")
        return cls(refs, archives)

    def ref(self, name: str) -> str:
        if name not in self.refs:
            raise NodeError(f"image {name} is not built; {self.HINT}")
        return self.refs[name]

    @property
    def pause(self) -> str:
        return self.refs["pause"]

    @property
    def runtime(self) -> str:
        return self.refs["runtime-onnx"]

    @property
    def operator(self) -> str:
        return self.refs["operator"]

    def only(self, *names: str) -> Images:
        """The same images, with only these (and pause) imported into a node."""
        keep = {n: r for n, r in self.refs.items() if n in {"pause", *names}}
        return Images(keep, {r: self.archives[r] for r in keep.values()})


def run(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise NodeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _read_sysctl(name: str) -> str | None:
    try:
        return Path("/proc/sys", name).read_text().strip()
    except OSError:
        return None


def _write_sysctl(name: str, value: str) -> None:
    with contextlib.suppress(OSError):
        Path("/proc/sys", name).write_text(value)


def _cgroup_dirs() -> list[Path]:
    """Our cgroup root in every v1 hierarchy (and the unified one, if present)."""
    base = Path("/sys/fs/cgroup")
    if (base / "cgroup.controllers").exists():
        return [base / CGROUP_ROOT]
    return [d / CGROUP_ROOT for d in sorted(base.iterdir()) if d.is_dir() and not d.is_symlink()]


def _kill_cgroup_tree(root: Path) -> None:
    for procs in root.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            for pid in procs.read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)


def _remove_cgroup_tree(root: Path) -> None:
    if not root.exists():
        return
    for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            d.rmdir()
    with contextlib.suppress(OSError):
        root.rmdir()


def _mounts_under(*prefixes: Path) -> list[str]:
    """Mount points under any of `prefixes`, deepest first, from this process's mountinfo."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if any(point == str(p) or point.startswith(f"{p}/") for p in prefixes):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def iptables_rules(tool: str = "iptables") -> dict[str, list[str]]:
    """The host's rules per table (IPv4, or IPv6 with ip6tables), without counters: what teardown must
    leave as it found."""
    out = run(f"{tool}-save").stdout
    tables: dict[str, list[str]] = {}
    current = ""
    for line in out.splitlines():
        if line.startswith("*"):
            current = line[1:]
            tables[current] = []
        elif line.startswith(("-A", ":")) and current:
            tables[current].append(re.sub(r"\[\d+:\d+\]", "", line).strip())
    # iptables-nft creates a table's built-in chains the first time anything lists or edits it; with no
    # rule and ACCEPT policies such a table filters nothing, the same as no table.
    return {
        table: rules
        for table, rules in tables.items()
        if any(not re.fullmatch(r":[A-Z]+ ACCEPT", r) for r in rules)
    }


def host_state() -> dict[str, object]:
    """A snapshot of everything the node touches on the host, to compare before and after."""
    links = json.loads(run("ip", "-j", "link", "show").stdout)
    return {
        "links": sorted(link["ifname"] for link in links),
        "mounts": sorted(line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()),
        "iptables": iptables_rules(),
        "sysctls": {name: _read_sysctl(name) for name in SYSCTLS},
        "cgroups": sorted(str(d) for d in _cgroup_dirs() if d.exists()),
        "processes": sorted(
            p.name
            for p in Path("/proc").iterdir()
            if p.name.isdigit() and _cmdline_has(p, ("containerd", "kubelet", "kube-proxy", "pause"))
        ),
    }


def _argv(proc: Path) -> list[str]:
    """A process's command line, or nothing once it has gone."""
    try:
        return (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _cmdline_has(proc: Path, needles: tuple[str, ...]) -> bool:
    argv = _argv(proc)
    return bool(argv) and any(Path(argv[0]).name.startswith(n) for n in needles)


@dataclass
class Node:
    """The host side and the node components of a test cluster with one node."""

    workdir: Path
    images: Images
    timings: dict[str, float] = field(default_factory=dict)
    _lock: int | None = None
    _sysctls: dict[str, str | None] = field(default_factory=dict)
    _bridge_made: bool = False
    _rules: list[tuple[str, ...]] = field(default_factory=list)

    @property
    def ip(self) -> str:
        return NODE_IP

    @property
    def containerd_socket(self) -> Path:
        return STATE_DIR / "containerd.sock"

    # -- host network: before the API server starts ---------------------------------------------------

    def prepare_host(self) -> None:
        if missing := missing_host_tools():
            raise NodeError("the test node needs: " + "; ".join(missing))
        self._lock = os.open(LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock)
            self._lock = None
            raise NodeError(f"another test node is running on this machine (it holds {LOCK_FILE})") from None
        # A cluster killed outright cannot clean up after itself; the next one does.
        self._remove_leftovers()
        self._sysctls = {name: _read_sysctl(name) for name in SYSCTLS}
        run("ip", "link", "add", BRIDGE, "type", "bridge")
        self._bridge_made = True
        run("ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE)
        run("ip", "link", "set", BRIDGE, "up")
        # The bridge plugin turns ip_forward on and this machine has a default route: before any pod
        # exists, drop everything forwarded from the bridge to another interface. The mangle table runs
        # before filter, where kube-proxy inserts its own ACCEPT rules first.
        self._add_rule(
            "iptables", "-t", "mangle", "-I", "FORWARD", "-i", BRIDGE, "!", "-o", BRIDGE, "-j", "DROP"
        )
        self._add_rule("ip6tables", "-t", "mangle", "-I", "FORWARD", "-i", BRIDGE, "-j", "DROP")
        # Count-only: a packet for the probe address that got as far as leaving the machine.
        self._add_rule(
            "iptables", "-t", "mangle", "-I", "POSTROUTING", "-d", OFF_BRIDGE_PROBE, "!", "-o", BRIDGE
        )
        # Pod to ClusterIP to a pod on the same bridge only meets kube-proxy's NAT if bridged traffic
        # passes iptables.
        _write_sysctl("net/bridge/bridge-nf-call-iptables", "1")

    def _add_rule(self, tool: str, *spec: str) -> None:
        table_and_op, rest = spec[:3], spec[3:]
        rule = (*rest, "-m", "comment", "--comment", RULE_COMMENT)
        run(tool, *table_and_op, *rule)
        self._rules.append((tool, table_and_op[1], rest[0], *rule[1:]))

    def dropped_packets(self) -> int:
        """Packets the isolation rule dropped: forwarded from the bridge towards another interface."""
        return self._rule_counter("FORWARD", "DROP")

    def escaped_probe_packets(self) -> int:
        """Packets for the probe address that reached the output path of another interface."""
        return self._rule_counter("POSTROUTING", OFF_BRIDGE_PROBE)

    def _rule_counter(self, chain: str, marker: str) -> int:
        out = run("iptables", "-t", "mangle", "-L", chain, "-v", "-x", "-n").stdout
        for line in out.splitlines():
            if RULE_COMMENT in line and marker in line:
                return int(line.split()[0])
        raise NodeError(f"the isolation rule in mangle {chain} is gone:\n{out}")

    # -- node components: after the control plane ----------------------------------------------------

    def start(self, plane: ControlPlane, timeout: float = 90) -> None:
        phase = time.monotonic()
        self._start_containerd(plane)
        self.timings["containerd"] = time.monotonic() - phase
        phase = time.monotonic()
        # Unpacking is mostly waiting on the disk: a few at once is faster than one after another.
        with ThreadPoolExecutor(max_workers=3) as pool:
            imports = [
                pool.submit(self.ctr, "images", "import", str(a), timeout=300)
                for a in self.images.archives.values()
            ]
            for done in imports:
                done.result()
        self.timings["images"] = time.monotonic() - phase
        phase = time.monotonic()
        self._start_kubelet(plane)
        self._start_kube_proxy(plane)
        self._wait_ready(plane, timeout)
        self.timings["node-ready"] = time.monotonic() - phase

    def ctr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run(
            "ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io", *args, timeout=timeout
        )

    def _start_containerd(self, plane: ControlPlane) -> None:
        d = self.workdir / "containerd"
        netd = self.workdir / "cni" / "net.d"
        for path in (d, netd, STATE_DIR, DATA_DIR):
            path.mkdir(parents=True, exist_ok=True)
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = f"""\
version = 2
root = "{DATA_DIR / "containerd"}"
state = "{STATE_DIR / "containerd"}"
# Keep the test node's runtime apart from any containerd the machine runs.
[grpc]
  address = "{self.containerd_socket}"
[ttrpc]
  address = "{self.containerd_socket}.ttrpc"
[{cri}]
  sandbox_image = "{self.images.pause}"
  # runc cannot raise oom_score_adj without CAP_SYS_RESOURCE, which this machine does not grant.
  restrict_oom_score_adj = true
  # Pod network namespaces under our state dir, so teardown finds every one of them.
  netns_mounts_under_state_dir = true
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        # No systemd here: cgroupfs, as kubelet's cgroupDriver.
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{netd}"
"""
        (d / "config.toml").write_text(config)
        conflist = {
            "cniVersion": "0.4.0",
            "name": "zeroserve",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    # A default route via the node, where the isolation rule drops anything bound off
                    # the machine; ClusterIPs are reached through it too.
                    "isDefaultGateway": True,
                    # Pods talk only to each other and to the node: nothing to masquerade.
                    "ipMasq": False,
                    # A pod reaching itself through its own Service's ClusterIP.
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                        "dataDir": str(DATA_DIR / "ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        (netd / "10-zeroserve.conflist").write_text(json.dumps(conflist, indent=2))
        component = plane.launch("containerd", ["containerd", "--config", str(d / "config.toml")])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            plane.raise_if_dead(component)
            if self.containerd_socket.exists() and self.ctr("version", timeout=10).returncode == 0:
                return
            time.sleep(0.1)
        raise NodeError(f"containerd did not come up; last log lines:\n{component.tail()}")

    def _start_kubelet(self, plane: ControlPlane) -> None:
        d = self.workdir / "kubelet"
        d.mkdir(parents=True, exist_ok=True)
        ca = plane.ca
        serving = ca.issue("kubelet-serving", NODE_NAME, dns=(NODE_NAME,), ips=(NODE_IP,), server=True)
        kubeconfig = plane.write_kubeconfig(
            d / "kubeconfig",
            f"system:node:{NODE_NAME}",
            ca.issue(
                "kubelet-client", f"system:node:{NODE_NAME}", organizations=("system:nodes",), client=True
            ),
        )
        for cg in _cgroup_dirs():
            cg.mkdir(exist_ok=True)
        # Pods get no resolver of the host's: nothing in a pod may look names up off the machine. Cluster
        # DNS, when a test installs it (tests/knative.py), answers cluster.local only.
        resolv = d / "resolv.conf"
        resolv.write_text("")
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            # This machine runs cgroup v1 without systemd.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            # One cgroup subtree of our own in each hierarchy, so teardown removes exactly it.
            "cgroupRoot": f"/{CGROUP_ROOT}",
            "failSwapOn": False,
            "address": NODE_IP,
            "port": plane.free_port(),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": plane.free_port(),
            "tlsCertFile": str(serving[0]),
            "tlsPrivateKeyFile": str(serving[1]),
            # The API server reaches kubelet with a client certificate from the cluster's CA, and
            # kubelet asks the API server who may do what.
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(ca.cert_file)},
            },
            "authorization": {"mode": "Webhook"},
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            "resolvConf": str(resolv),
            "clusterDomain": "cluster.local",
            "clusterDNS": [CLUSTER_DNS_IP],
            "podLogsDir": str(d / "pod-logs"),
            # A test machine's disk and memory are shared with the suite: never evict test pods.
            "evictionHard": {"memory.available": "0%", "nodefs.available": "0%", "imagefs.available": "0%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "podCIDR": POD_CIDR,
            "maxPods": 60,
            "registerNode": True,
            "syncFrequency": "10s",
            "fileCheckFrequency": "10s",
            "nodeStatusUpdateFrequency": "2s",
            "shutdownGracePeriod": "0s",
        }
        (d / "config.yaml").write_text(yaml.safe_dump(config))
        plane.launch(
            "kubelet",
            [
                str(plane.binaries.kubelet),
                f"--config={d / 'config.yaml'}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={DATA_DIR / 'kubelet'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
                "--v=1",
            ],
        )

    def _start_kube_proxy(self, plane: ControlPlane) -> None:
        d = self.workdir / "kube-proxy"
        d.mkdir(parents=True, exist_ok=True)
        kubeconfig = plane.write_kubeconfig(
            d / "kubeconfig",
            "system:kube-proxy",
            plane.ca.issue("kube-proxy", "system:kube-proxy", client=True),
        )
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "hostnameOverride": NODE_NAME,
            "clusterCIDR": POD_CIDR,
            "bindAddress": "127.0.0.1",
            "healthzBindAddress": f"127.0.0.1:{plane.free_port()}",
            "metricsBindAddress": f"127.0.0.1:{plane.free_port()}",
            # NodePorts on the bridge address only; on loopback they would need route_localnet.
            "nodePortAddresses": [f"{NODE_IP}/32"],
            "iptables": {"localhostNodePorts": False},
            # Leave the host's conntrack table size alone.
            "conntrack": {"maxPerCore": 0, "min": 0},
        }
        (d / "config.yaml").write_text(yaml.safe_dump(config))
        plane.launch("kube-proxy", [str(plane.binaries.kube_proxy), f"--config={d / 'config.yaml'}", "--v=1"])

    def _wait_ready(self, plane: ControlPlane, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "not registered yet"
        while time.monotonic() < deadline:
            plane.check_alive()
            got = plane.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
            if got.returncode == 0:
                node = json.loads(got.stdout)
                conditions = {c["type"]: c for c in node["status"].get("conditions", [])}
                ready = conditions.get("Ready", {})
                taints = [t["key"] for t in node["spec"].get("taints", [])]
                if ready.get("status") == "True" and not taints:
                    return
                last = f"Ready={ready.get('status')} ({ready.get('message', '')}), taints={taints}"
            time.sleep(0.5)
        raise NodeError(f"node {NODE_NAME} was not Ready within {timeout:.0f}s: {last}")

    # -- teardown -------------------------------------------------------------------------------------

    def drain(self, plane: ControlPlane, timeout: float = 60) -> None:
        """Delete every pod through the API and let kubelet stop them: killing kubelet mid-deletion
        would leave sandboxes (shims, pause processes, network namespaces) behind."""
        plane.kubectl(
            "delete", "pods", "--all", "--all-namespaces", "--wait=false", "--grace-period=5", check=False
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = plane.kubectl("get", "pods", "-A", "-o", "name", check=False)
            if got.returncode != 0 or not got.stdout.strip():
                break
            time.sleep(0.5)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.containerd_socket.exists():
            pods = self.ctr("containers", "ls", "-q", timeout=10)
            if pods.returncode != 0 or not pods.stdout.strip():
                break
            time.sleep(0.5)

    def cleanup(self, kube_proxy: Path | None) -> None:
        """Remove what the node made on the host, once its processes are stopped."""
        try:
            if kube_proxy is not None:
                run(str(kube_proxy), "--cleanup", check=False, timeout=60)
            self._remove_leftovers()
            for tool, table, chain, *rule in self._rules:
                run(tool, "-t", table, "-D", chain, *rule, check=False)
            self._rules.clear()
            for name, value in self._sysctls.items():
                if value is not None and _read_sysctl(name) != value:
                    _write_sysctl(name, value)
        finally:
            if self._lock is not None:
                os.close(self._lock)
                self._lock = None

    def _remove_leftovers(self) -> None:
        remove_leftovers()


def remove_leftovers() -> None:
    """Processes, mounts, network namespaces, cgroups, iptables rules and the bridge of a node: this one
    once it is stopped, or an earlier one that was killed before it could clean up."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and _shim_of_ours(proc):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)
    for cg in _cgroup_dirs():
        _kill_cgroup_tree(cg)
    time.sleep(0.2)
    for point in _mounts_under(STATE_DIR, DATA_DIR):
        run("umount", "--lazy", point, check=False)
    for cg in _cgroup_dirs():
        _remove_cgroup_tree(cg)
    # Our own rules, and kubelet's and kube-proxy's chains (`kube-proxy --cleanup` leaves kubelet's
    # canaries, and a killed node never ran it): every rule jumping to one, then the chain.
    for tool in ("iptables", "ip6tables"):
        for table, rules in iptables_rules(tool).items():
            chains = {r.split()[0][1:] for r in rules if r.startswith(":KUBE-")}
            for rule in rules:
                if rule.startswith("-A ") and (
                    RULE_COMMENT in rule or any(f"-j {c}" in rule for c in chains)
                ):
                    run(tool, "-t", table, *shlex.split(rule.replace("-A ", "-D ", 1)), check=False)
            for chain in chains:
                run(tool, "-t", table, "-F", chain, check=False)
                run(tool, "-t", table, "-X", chain, check=False)
    if run("ip", "link", "show", BRIDGE, check=False).returncode == 0:
        run("ip", "link", "delete", BRIDGE, check=False)
    shutil.rmtree(STATE_DIR, ignore_errors=True)
    shutil.rmtree(DATA_DIR, ignore_errors=True)


def _shim_of_ours(proc: Path) -> bool:
    argv = _argv(proc)
    return (
        bool(argv) and Path(argv[0]).name.startswith("containerd-shim") and str(STATE_DIR) in " ".join(argv)
    )
