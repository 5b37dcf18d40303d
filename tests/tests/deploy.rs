//! deploy/: the Kubernetes manifests, the alert rules, the image definition and the systemd unit,
//! validated offline by the tools of their own ecosystems, and checked against each other and
//! against the agent (its config parser, its endpoints, its metrics).
//!
//! Tools: `kubernetes-validate` (bundles the Kubernetes API schemas) and `hadolint` from a venv
//! (`cargo xtask test` installs them and names the venv in `HOLDFAST_VENV`), `promtool` (Debian's
//! `prometheus`) and `systemd-analyze` from PATH.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use holdfast::config::{Config, IpamSource};
use serde_yaml::Value;

/// Kubernetes versions the manifests must be valid for: an old one still in support somewhere,
/// and the newest that kubernetes-validate bundles.
const KUBERNETES_VERSIONS: &[&str] = &["1.30.0", "1.37.0"];

/// The agent's metrics the rules may use (README.md, Metrics), and Prometheus' own `up`.
const METRICS: &[&str] = &[
    "up",
    "holdfast_ipam_up",
    "holdfast_ipam_last_sync_timestamp_seconds",
    "holdfast_ipam_stale_seconds",
    "holdfast_ipam_reconnects_total",
    "holdfast_ipam_load_errors_total",
    "holdfast_ipam_rejected_total",
    "holdfast_ipam_rejected_entries",
    "holdfast_dhcp_misses_total",
    "holdfast_dhcp_replies_total",
    "holdfast_dhcp_drops_total",
    "holdfast_dhcp_declines_total",
    "holdfast_drops_total",
    "holdfast_dataplane_errors_total",
    "holdfast_runtime_lag_seconds",
    "holdfast_leases",
    "holdfast_interfaces",
    "holdfast_build_info",
    "holdfast_http_accept_errors_total",
    "holdfast_http_connections_closed_total",
];

/// `reason` values of `holdfast_http_connections_closed_total`.
const HTTP_CLOSE_REASONS: &[&str] = &["evicted", "refused", "timeout"];

/// `reason` values of `holdfast_drops_total` and `holdfast_dhcp_drops_total`.
const DROP_REASONS: &[&str] = &[
    "spoofed_mac",
    "spoofed_ip",
    "arp_spoof",
    "arp_unknown",
    "arp_no_answer",
    "bcast_mcast",
    "unknown_unicast",
    "not_ipv4",
    "malformed",
    "no_underlay",
    "no_route",
    "unknown_vtep",
    "unknown_vni",
    "unknown_inner_dst",
    "inner_spoof",
    "inner_spoofed_ip",
    "decap_arp",
    "decap_not_ipv4",
    "underlay_ip_options",
    "underlay_fragment",
    "decap_not_vtep",
    "spoofed_ip6",
    "ipv6_not_configured",
    "ipv6_link_local",
    "ipv6_ext_header",
    "nd_unknown",
    "nd_no_answer",
    "nd_malformed",
    "nd_skb_path",
    "nd_rate_limited",
    "route_blackhole",
    "route_unreachable",
    "route_prohibit",
    "to_router",
    "arp_rate_limited",
    "arp_skb_path",
    "bad_options",
    "chaddr_mismatch",
    "rogue_server",
    "relayed",
    "unknown_type",
    "bad_request",
    "no_room",
    "other_server",
    "rate_limited",
    "skb_path",
    "to_gateway",
    "routed_spoof",
    "route_unsupported",
];

const NAMESPACE: &str = "holdfast";
const CONFIG_PATH: &str = "/etc/holdfast/holdfast.toml";

// ---------------------------------------------------------------------------------------------
// Files and tools

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("deploy")
}

fn read(rel: &str) -> String {
    let p = deploy_dir().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

fn yaml(rel: &str) -> Value {
    serde_yaml::from_str(&read(rel)).unwrap_or_else(|e| panic!("deploy/{rel}: {e}"))
}

/// The manifests listed by kustomization.yaml, parsed, by file name.
fn manifests() -> Vec<(String, Value)> {
    let k = yaml("kubernetes/kustomization.yaml");
    seq(&k["resources"])
        .iter()
        .map(|r| {
            let name = str_of(r).to_owned();
            let v = yaml(&format!("kubernetes/{name}"));
            (name, v)
        })
        .collect()
}

fn manifest(kind: &str) -> Value {
    let mut found = manifests().into_iter().filter(|(_, v)| v["kind"] == kind);
    let (_, v) = found
        .next()
        .unwrap_or_else(|| panic!("no {kind} in kustomization.yaml"));
    assert!(found.next().is_none(), "more than one {kind}");
    v
}

fn seq(v: &Value) -> &Vec<Value> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("expected a list, got {v:?}"))
}

fn str_of(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v:?}"))
}

fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    seq(list)
        .iter()
        .find(|x| x["name"] == name)
        .unwrap_or_else(|| panic!("no entry named {name} in {list:?}"))
}

fn home() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
}

/// A command from PATH (or /usr/sbin, /sbin).
fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} not found on PATH: `cargo xtask test` installs it (xtask/src/setup.rs)")
        })
}

/// A command from the deploy tests' venv (HOLDFAST_VENV, else where xtask creates it), else PATH.
fn venv_tool(name: &str) -> PathBuf {
    let venv = std::env::var_os("HOLDFAST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".local/share/holdfast-venv"));
    let p = venv.join("bin").join(name);
    if p.is_file() { p } else { tool(name) }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"))
}

/// Runs `cmd`, panicking with its output unless it succeeds; returns its stdout.
fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A scratch file, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str, text: &str) -> Self {
        let p = std::env::temp_dir().join(holdfast_tests::unique(name));
        std::fs::write(&p, text).expect("scratch file");
        Self(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// Kubernetes manifests

fn is_kubernetes_api(v: &Value) -> bool {
    let api = str_of(&v["apiVersion"]);
    !api.starts_with("monitoring.coreos.com/") && !api.starts_with("kustomize.config.k8s.io/")
}

#[test]
fn manifests_validate_against_the_kubernetes_api() {
    let kv = venv_tool("kubernetes-validate");
    let dir = deploy_dir().join("kubernetes");
    let files: Vec<String> = manifests()
        .into_iter()
        .filter(|(_, v)| is_kubernetes_api(v))
        .map(|(f, _)| f)
        .collect();
    assert!(files.len() >= 6, "too few core manifests: {files:?}");
    let mut cmd = Command::new(&kv);
    cmd.current_dir(&dir).arg("--strict");
    for v in KUBERNETES_VERSIONS {
        cmd.args(["-k", v]);
    }
    let out = run_ok(cmd.args(&files));
    // A kind without a schema is only a warning, and validates nothing: every file must pass.
    assert!(!out.contains("WARN"), "{out}");
    for f in &files {
        for v in KUBERNETES_VERSIONS {
            let minor = v.rsplit_once('.').map_or(*v, |(m, _)| m);
            assert!(
                out.lines()
                    .any(|l| l.starts_with(&format!("INFO {f} passed for resource"))
                        && l.ends_with(&format!("against version {minor}"))),
                "{f} was not validated against {v}:\n{out}"
            );
        }
    }

    // The validator is strict: a misspelt field fails.
    let bad = Scratch::new(
        "daemonset.yaml",
        &read("kubernetes/daemonset.yaml").replace("hostNetwork:", "hostNetwrok:"),
    );
    let out = run(Command::new(&kv)
        .args(["--strict", "-k", KUBERNETES_VERSIONS[1]])
        .arg(&bad.0));
    assert!(
        !out.status.success(),
        "kubernetes-validate accepted an unknown field"
    );
}

#[test]
fn kustomization_lists_every_manifest_in_one_namespace() {
    let dir = deploy_dir().join("kubernetes");
    let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    let listed: BTreeSet<String> = manifests().into_iter().map(|(f, _)| f).collect();
    assert_eq!(listed, on_disk, "kustomization.yaml resources vs files");

    let k = yaml("kubernetes/kustomization.yaml");
    assert_eq!(k["kind"], "Kustomization");
    for (file, v) in manifests() {
        assert!(
            v["apiVersion"].is_string() && v["kind"].is_string(),
            "{file}"
        );
        assert_eq!(
            v["metadata"]["labels"]["app.kubernetes.io/name"], "holdfast",
            "{file}"
        );
        if v["kind"] == "Namespace" {
            assert_eq!(v["metadata"]["name"], NAMESPACE);
            // The bpffs init container is privileged: the namespace must admit it.
            assert_eq!(
                v["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
                "privileged"
            );
        } else {
            assert_eq!(v["metadata"]["namespace"], NAMESPACE, "{file}");
        }
    }
    // The image kustomize rewrites is the one the pods run.
    let image = str_of(&seq(&k["images"])[0]["name"]);
    let pod = &manifest("DaemonSet")["spec"]["template"]["spec"];
    for c in seq(&pod["containers"])
        .iter()
        .chain(seq(&pod["initContainers"]))
    {
        assert!(
            str_of(&c["image"]).starts_with(&format!("{image}:")),
            "{:?}",
            c["name"]
        );
    }
}

fn pod_spec() -> Value {
    manifest("DaemonSet")["spec"]["template"]["spec"].clone()
}

fn agent_container(pod: &Value) -> Value {
    named(&pod["containers"], "holdfast").clone()
}

fn capability_set(v: &Value) -> BTreeSet<String> {
    seq(v).iter().map(|c| str_of(c).to_owned()).collect()
}

#[test]
fn daemonset_runs_everywhere_with_least_privilege() {
    let ds = manifest("DaemonSet");
    assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate");
    assert_eq!(
        ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        1
    );
    let selector = &ds["spec"]["selector"]["matchLabels"];
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    for (k, v) in selector.as_mapping().expect("matchLabels") {
        assert_eq!(&labels[k], v, "pod labels do not match the selector");
    }

    let pod = pod_spec();
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["serviceAccountName"], "holdfast");
    assert_eq!(
        manifest("ServiceAccount")["automountServiceAccountToken"],
        false
    );
    // Every taint tolerated: one toleration, operator Exists, no key and no effect.
    let tolerations = seq(&pod["tolerations"]);
    assert!(
        tolerations
            .iter()
            .any(|t| t["operator"] == "Exists" && t["key"].is_null() && t["effect"].is_null()),
        "{tolerations:?}"
    );
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace period");
    assert!(grace <= 15, "grace period {grace}s: nothing to drain");
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );

    let c = agent_container(&pod);
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsUser"], 0);
    assert_ne!(sc["privileged"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(
        capability_set(&sc["capabilities"]["drop"]),
        BTreeSet::from(["ALL".to_owned()])
    );
    assert_eq!(
        capability_set(&sc["capabilities"]["add"]),
        ["BPF", "NET_ADMIN", "PERFMON"]
            .map(str::to_owned)
            .into_iter()
            .collect::<BTreeSet<_>>()
    );

    // The only privileged container is the init container that mounts bpffs.
    for c in seq(&pod["containers"]) {
        assert_ne!(c["securityContext"]["privileged"], true, "{:?}", c["name"]);
    }
    let inits = seq(&pod["initContainers"]);
    assert_eq!(inits.len(), 1);
    assert_eq!(inits[0]["securityContext"]["privileged"], true);

    // A memory limit, and no CPU limit (throttling is event-loop lag).
    let res = &c["resources"];
    assert!(res["limits"]["memory"].is_string(), "{res:?}");
    assert!(res["requests"]["memory"].is_string(), "{res:?}");
    assert!(res["requests"]["cpu"].is_string(), "{res:?}");
    assert!(res["limits"]["cpu"].is_null(), "CPU limit: {res:?}");

    let env = &c["env"];
    assert_eq!(
        named(env, "HOLDFAST_NODE")["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert_eq!(named(env, "RUST_LOG")["value"], "info");
    assert_eq!(
        c["args"],
        Value::Sequence(vec!["run".into(), "--config".into(), CONFIG_PATH.into()])
    );
}

/// The volume a container mounts at `path`, and the mount.
fn mount_at(pod: &Value, container: &Value, path: &str) -> (Value, Value) {
    let m = seq(&container["volumeMounts"])
        .iter()
        .find(|m| m["mountPath"] == path)
        .unwrap_or_else(|| panic!("{:?} mounts nothing at {path}", container["name"]))
        .clone();
    let v = named(&pod["volumes"], str_of(&m["name"])).clone();
    (m, v)
}

#[test]
fn daemonset_mounts_bpffs_state_and_config_as_the_agent_needs() {
    let pod = pod_spec();
    let config = configmap_config();
    let agent = agent_container(&pod);
    let init = &seq(&pod["initContainers"])[0];

    // bpffs: the init container mounts it on the host (Bidirectional), the agent sees the
    // host's (HostToContainer), and bpffs_dir lies inside.
    let (m, v) = mount_at(&pod, init, "/sys/fs/bpf");
    assert_eq!(m["mountPropagation"], "Bidirectional");
    assert_eq!(v["hostPath"]["path"], "/sys/fs/bpf");
    assert_eq!(v["hostPath"]["type"], "DirectoryOrCreate");
    let script = seq(&init["command"])
        .iter()
        .map(str_of)
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        script.contains("mount -t bpf -o mode=0700 bpf /sys/fs/bpf"),
        "{script}"
    );
    let (m, v) = mount_at(&pod, &agent, "/sys/fs/bpf");
    assert_eq!(m["mountPropagation"], "HostToContainer");
    assert_eq!(v["hostPath"]["path"], "/sys/fs/bpf");
    assert!(config.bpffs_dir.starts_with("/sys/fs/bpf/"));
    for c in seq(&pod["containers"])
        .iter()
        .chain(seq(&pod["initContainers"]))
    {
        for m in seq(&c["volumeMounts"]) {
            if m["mountPropagation"] == "Bidirectional" {
                assert_eq!(c["securityContext"]["privileged"], true, "{:?}", c["name"]);
            }
        }
    }

    // state_dir on the host, writable, so the snapshot outlives the pod.
    let state = config.state_dir.to_str().expect("state_dir");
    let (m, v) = mount_at(&pod, &agent, state);
    assert_eq!(v["hostPath"]["path"], "/var/lib/holdfast");
    assert_eq!(v["hostPath"]["type"], "DirectoryOrCreate");
    assert_ne!(m["readOnly"], true);

    // The config and the etcd credentials, read-only, where holdfast.toml says they are.
    let (m, v) = mount_at(&pod, &agent, "/etc/holdfast");
    assert_eq!(m["readOnly"], true);
    let mut projected = BTreeSet::new();
    for source in seq(&v["projected"]["sources"]) {
        let (kind, what) = if source["configMap"].is_mapping() {
            ("ConfigMap", &source["configMap"])
        } else {
            ("Secret", &source["secret"])
        };
        assert_ne!(what["optional"], true, "{what:?}");
        if kind == "ConfigMap" {
            assert_eq!(what["name"], manifest("ConfigMap")["metadata"]["name"]);
        }
        for item in seq(&what["items"]) {
            projected.insert(format!("/etc/holdfast/{}", str_of(&item["path"])));
        }
    }
    let tls = config.ipam.tls.as_ref().expect("[ipam.tls]");
    let auth = config.ipam.auth.as_ref().expect("[ipam.auth]");
    let mut needed = vec![
        CONFIG_PATH.into(),
        tls.ca.clone(),
        auth.password_file.clone(),
    ];
    needed.extend(tls.cert.clone());
    needed.extend(tls.key.clone());
    for p in needed {
        let p = p.to_str().expect("path").to_owned();
        assert!(projected.contains(&p), "{p} is not mounted: {projected:?}");
    }
}

#[test]
fn daemonset_probes_the_agents_endpoints() {
    let pod = pod_spec();
    let agent = agent_container(&pod);
    let config = configmap_config();
    let port = named(&agent["ports"], "metrics");
    assert_eq!(port["containerPort"], u64::from(config.metrics_addr.port()));
    // hostNetwork: the kubelet and Prometheus reach the node's address.
    assert!(
        config.metrics_addr.ip().is_unspecified(),
        "{}",
        config.metrics_addr
    );

    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        let p = &agent[probe];
        assert_eq!(p["httpGet"]["path"], path, "{probe}");
        assert_eq!(p["httpGet"]["port"], "metrics", "{probe}");
    }
    // Startup is generous: a minute at least before liveness may act.
    let s = &agent["startupProbe"];
    let budget = s["periodSeconds"].as_u64().expect("period")
        * s["failureThreshold"].as_u64().expect("threshold");
    assert!(budget >= 60, "startup budget {budget}s");
}

#[test]
fn service_and_servicemonitor_scrape_the_agents_as_job_holdfast() {
    let pod_labels = manifest("DaemonSet")["spec"]["template"]["metadata"]["labels"].clone();
    let svc = manifest("Service");
    assert_eq!(svc["spec"]["clusterIP"], "None");
    for (k, v) in svc["spec"]["selector"].as_mapping().expect("selector") {
        assert_eq!(&pod_labels[k], v, "the Service does not select the agents");
    }
    let port = named(&svc["spec"]["ports"], "metrics");
    assert_eq!(
        port["port"],
        u64::from(configmap_config().metrics_addr.port())
    );
    assert_eq!(port["targetPort"], "metrics");
    // The alert rules select job="holdfast", which the operator takes from the Service's name.
    assert_eq!(svc["metadata"]["name"], "holdfast");

    let sm = manifest("ServiceMonitor");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert!(sm["spec"]["jobLabel"].is_null());
    for (k, v) in sm["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .expect("matchLabels")
    {
        assert_eq!(
            &svc["metadata"]["labels"][k], v,
            "the ServiceMonitor misses the Service"
        );
    }
    assert!(seq(&sm["spec"]["namespaceSelector"]["matchNames"]).contains(&Value::from(NAMESPACE)));
    let ep = &seq(&sm["spec"]["endpoints"])[0];
    assert_eq!(ep["port"], "metrics");
    assert_eq!(ep["path"], "/metrics");
}

// ---------------------------------------------------------------------------------------------
// holdfast.toml: the ConfigMap's, and the systemd example

fn configmap_toml() -> String {
    let cm = manifest("ConfigMap");
    str_of(&cm["data"]["holdfast.toml"]).to_owned()
}

/// The ConfigMap's holdfast.toml, through the agent's own parser, with HOLDFAST_NODE set.
fn configmap_config() -> Config {
    Config::parse_with_node(
        Path::new(CONFIG_PATH),
        &configmap_toml(),
        Some("node-a".into()),
    )
    .unwrap_or_else(|e| panic!("configmap.yaml: {e}"))
}

#[test]
fn configmap_config_is_what_the_agent_accepts() {
    let text = configmap_toml();
    // Plain TOML first, for the keys the deployment relies on.
    let t: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("holdfast.toml: {e}"));
    for key in [
        "node",
        "state_dir",
        "bpffs_dir",
        "metrics_addr",
        "router_mac",
        "ipam",
        "underlay",
    ] {
        assert!(t.contains_key(key), "holdfast.toml lacks {key}");
    }
    assert_eq!(t["underlay"]["interface"].as_str(), Some("eth1"));

    let c = configmap_config();
    assert_eq!(c.node, "node-a", "HOLDFAST_NODE replaces node");
    assert_eq!(c.state_dir, Path::new("/var/lib/holdfast"));
    assert_eq!(c.bpffs_dir, Path::new("/sys/fs/bpf/holdfast"));
    assert_eq!(c.metrics_addr.to_string(), "0.0.0.0:9469");
    assert_eq!(c.ipam.source, IpamSource::Etcd);
    assert!(c.ipam.endpoints.len() >= 2, "{:?}", c.ipam.endpoints);
    assert!(
        c.ipam.endpoints.iter().all(|e| e.starts_with("https://")),
        "{:?}",
        c.ipam.endpoints
    );
    assert_eq!(c.ipam.prefix, "/holdfast");
    let tls = c.ipam.tls.as_ref().expect("[ipam.tls]");
    assert!(tls.cert.is_some() && tls.key.is_some());
    assert!(c.ipam.auth.is_some());
    assert_eq!(
        c.underlay.as_ref().map(|u| u.interface.as_str()),
        Some("eth1")
    );

    // Without HOLDFAST_NODE, the empty node makes the agent refuse to start.
    assert!(
        Config::parse_with_node(Path::new(CONFIG_PATH), &text, None).is_err(),
        "an agent without HOLDFAST_NODE would start"
    );
}

#[test]
fn example_config_and_its_etcd_variant_parse() {
    let text = read("holdfast.toml");
    let c = Config::parse_with_node(Path::new(CONFIG_PATH), &text, None)
        .unwrap_or_else(|e| panic!("holdfast.toml: {e}"));
    assert_eq!(c.ipam.source, IpamSource::File);
    assert_eq!(c.metrics_addr.to_string(), "127.0.0.1:9469");

    // The commented etcd example, uncommented in place of the active [ipam] table.
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| *l == "# [ipam]")
        .expect("a commented [ipam] example");
    let example: Vec<String> = lines[start..]
        .iter()
        .take_while(|l| l.starts_with('#'))
        .map(|l| l.trim_start_matches('#').trim_start().to_owned())
        .collect();
    let mut active = Vec::new();
    let mut in_ipam = false;
    for l in &lines {
        if l.starts_with('[') {
            in_ipam = *l == "[ipam]";
        }
        if !in_ipam {
            active.push((*l).to_owned());
        }
    }
    let etcd = format!("{}\n{}\n", active.join("\n"), example.join("\n"));
    let c = Config::parse_with_node(Path::new(CONFIG_PATH), &etcd, None)
        .unwrap_or_else(|e| panic!("holdfast.toml's etcd example: {e}\n{etcd}"));
    assert_eq!(c.ipam.source, IpamSource::Etcd);
    assert!(c.ipam.tls.is_some() && c.ipam.auth.is_some());
}

// ---------------------------------------------------------------------------------------------
// Alert rules

fn rules() -> Vec<Value> {
    let r = yaml("prometheus/holdfast-alerts.yaml");
    seq(&r["groups"])
        .iter()
        .flat_map(|g| seq(&g["rules"]).clone())
        .collect()
}

#[test]
fn alert_rules_pass_promtool() {
    let promtool = tool("promtool");
    let dir = deploy_dir().join("prometheus");
    let out = run_ok(Command::new(&promtool).current_dir(&dir).args([
        "check",
        "rules",
        "holdfast-alerts.yaml",
    ]));
    assert!(out.contains("SUCCESS"), "{out}");
    // The unit tests: IPAM down fires after 2 minutes, not before; staleness, runtime lag,
    // spoofing and a dead agent fire with their rendered annotations.
    let out = run_ok(Command::new(&promtool).current_dir(&dir).args([
        "test",
        "rules",
        "holdfast-alerts.test.yaml",
    ]));
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn prometheusrule_carries_the_rule_file() {
    let plain = yaml("prometheus/holdfast-alerts.yaml");
    let pr = manifest("PrometheusRule");
    assert_eq!(pr["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(
        pr["spec"]["groups"], plain["groups"],
        "kubernetes/prometheusrule.yaml differs from prometheus/holdfast-alerts.yaml, its \
         source: regenerate it (the command is in its header)"
    );
    assert_eq!(
        pr["spec"].as_mapping().expect("spec").len(),
        1,
        "spec: groups only"
    );
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_alert_is_actionable() {
    let readme = read("README.md");
    let anchors: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("### "))
        .map(anchor)
        .collect();
    let mut alerts = BTreeSet::new();
    for r in rules() {
        let name = str_of(&r["alert"]).to_owned();
        let severity = str_of(&r["labels"]["severity"]);
        assert!(
            ["warning", "critical"].contains(&severity),
            "{name}: severity {severity}"
        );
        for a in ["summary", "description", "runbook"] {
            assert!(
                !str_of(&r["annotations"][a]).trim().is_empty(),
                "{name}: no {a}"
            );
        }
        let runbook = str_of(&r["annotations"]["runbook"]);
        let section = runbook
            .strip_prefix("deploy/README.md#")
            .unwrap_or_else(|| panic!("{name}: runbook {runbook} is not in deploy/README.md"));
        assert_eq!(section, anchor(&name), "{name}: runbook points elsewhere");
        assert!(
            anchors.contains(section),
            "{name}: no section {section} in deploy/README.md"
        );

        // Only metrics the agent exports, only drop reasons it counts.
        let expr = str_of(&r["expr"]);
        for m in metric_names(expr) {
            assert!(METRICS.contains(&m.as_str()), "{name}: unknown metric {m}");
        }
        // Of IPAM rejections, the labels of `Reason`; of drops, those the programs count.
        let ipam = expr.contains("holdfast_ipam_rejected");
        for reason in reasons(expr) {
            let known = if ipam {
                holdfast::model::Reason::ALL
                    .iter()
                    .any(|r| r.label() == reason)
            } else {
                DROP_REASONS.contains(&reason) || HTTP_CLOSE_REASONS.contains(&reason)
            };
            assert!(known, "{name}: unknown reason {reason}");
        }
        alerts.insert(name);
    }
    // What an operator must see early.
    for required in [
        "HoldfastIpamDown",
        "HoldfastIpamStale",
        "HoldfastIpamRejectingEntries",
        "HoldfastDhcpMisses",
        "HoldfastSpoofedTraffic",
        "HoldfastVpcDropsRising",
        "HoldfastDataplaneErrors",
        "HoldfastRuntimeLag",
        "HoldfastAgentDown",
        "HoldfastAgentAbsent",
    ] {
        assert!(alerts.contains(required), "no alert {required}");
    }
    let by_name = |n: &str| {
        rules()
            .into_iter()
            .find(|r| r["alert"] == n)
            .expect("alert")
    };
    let lag = by_name("HoldfastRuntimeLag");
    assert_eq!(lag["expr"], "holdfast_runtime_lag_seconds > 0.1");
    assert_eq!(lag["for"], "1m");
    assert_eq!(lag["labels"]["severity"], "critical");
    let stale = by_name("HoldfastIpamStale");
    assert_eq!(stale["labels"]["severity"], "critical");
    assert!(
        str_of(&stale["annotations"]["description"]).contains("still serving the last"),
        "HoldfastIpamStale must say what still works"
    );
}

/// The metric names in a PromQL expression: `holdfast_…` identifiers and `up`, outside quotes.
fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.split('"')
        .step_by(2)
        .flat_map(|part| part.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')))
        .filter(|w| w.starts_with("holdfast_") || *w == "up")
        .map(str::to_owned)
        .collect()
}

/// The values a PromQL expression matches `reason` against (`reason="a"`, `reason=~"a|b"`).
fn reasons(expr: &str) -> Vec<&str> {
    ["reason=\"", "reason=~\""]
        .iter()
        .flat_map(|m| expr.split(m).skip(1))
        .flat_map(|rest| rest.split('"').next().unwrap_or_default().split('|'))
        .collect()
}

#[test]
fn every_runbook_section_has_its_alert() {
    let readme = read("README.md");
    let alerts: BTreeSet<String> = rules()
        .iter()
        .map(|r| str_of(&r["alert"]).to_owned())
        .collect();
    for heading in readme
        .lines()
        .filter_map(|l| l.strip_prefix("### Holdfast"))
    {
        let name = format!("Holdfast{heading}");
        assert!(
            alerts.contains(&name),
            "runbook section {name} has no alert"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The systemd unit and the image

fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
        .collect()
}

#[test]
fn systemd_unit_verifies_with_notify_and_watchdog() {
    let unit = read("holdfast.service");
    let one = |key: &str| {
        let v = unit_values(&unit, key);
        assert_eq!(v.len(), 1, "{key}: {v:?}");
        v[0].clone()
    };
    assert_eq!(one("Type"), "notify");
    assert_eq!(one("NotifyAccess"), "main");
    assert_eq!(one("WatchdogSec"), "10s");
    assert_eq!(one("Restart"), "always");
    assert_eq!(one("StartLimitIntervalSec"), "0");
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(
        one("ExecStart"),
        format!("/usr/local/bin/holdfast run --config {CONFIG_PATH}")
    );
    let caps: BTreeSet<&str> = ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"].into();
    for key in ["AmbientCapabilities", "CapabilityBoundingSet"] {
        let v = one(key);
        assert_eq!(v.split_whitespace().collect::<BTreeSet<_>>(), caps, "{key}");
    }
    let rw = one("ReadWritePaths");
    let rw: BTreeSet<&str> = rw.split_whitespace().collect();
    assert!(
        rw.contains("/sys/fs/bpf") && rw.contains("/var/lib/holdfast"),
        "{rw:?}"
    );
    // Files: far above the metrics port's connection limit (at most 1,024), so that its
    // connections cannot starve netlink, maps or etcd.
    let nofile: u64 = one("LimitNOFILE").parse().expect("LimitNOFILE: a number");
    assert!(nofile >= 65536, "LimitNOFILE={nofile}");
    // bpffs is mounted on the host before the agent, outside its mount namespace.
    assert!(
        one("ExecStartPre").starts_with("+")
            && one("ExecStartPre").contains("mount -t bpf -o mode=0700 bpf /sys/fs/bpf"),
        "{:?}",
        one("ExecStartPre")
    );

    // systemd's own parser: every key known, every value valid. The binary is not installed
    // here, so ExecStart names one that is.
    let analyze = tool("systemd-analyze");
    let verify = |text: &str| {
        let f = Scratch::new("holdfast.service", text);
        let out = run(Command::new(&analyze)
            .args(["verify", "--man=no"])
            .arg(&f.0));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        )
    };
    let testable = unit.replace("/usr/local/bin/holdfast ", "/bin/true ");
    let (ok, errors) = verify(&testable);
    assert!(ok && errors.is_empty(), "systemd-analyze verify:\n{errors}");
    // It does complain about a misspelt key.
    let (_, errors) = verify(&testable.replace("WatchdogSec=", "WatchdogSecs="));
    assert!(errors.contains("WatchdogSecs"), "{errors}");
}

#[test]
fn containerfile_lints_and_builds_the_agent() {
    let hadolint = venv_tool("hadolint");
    run_ok(
        Command::new(&hadolint)
            .arg("--no-color")
            .arg(deploy_dir().join("Containerfile")),
    );

    let text = read("Containerfile");
    let instructions: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .collect();
    let froms: Vec<&&str> = instructions
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(froms.len(), 2, "a builder and a runtime stage: {froms:?}");
    assert!(froms[0].ends_with(" AS builder"), "{}", froms[0]);
    assert!(
        froms[1].contains("debian:") && froms[1].contains("-slim"),
        "{}",
        froms[1]
    );
    for needed in [
        "protobuf-compiler",
        "rustup toolchain install nightly",
        "cargo xtask build-ebpf",
        "cargo build --release --locked -p holdfast",
        "COPY --from=builder",
        r#"ENTRYPOINT ["/usr/local/bin/holdfast"]"#,
    ] {
        assert!(text.contains(needed), "Containerfile lacks {needed}");
    }
    // The runtime stage copies the binary and nothing else in.
    let runtime = text.split(froms[1]).nth(1).expect("runtime stage");
    assert!(
        !runtime.contains("RUN "),
        "the runtime stage installs nothing"
    );
    assert_eq!(runtime.matches("COPY ").count(), 1);
}
