//! The deploy/ folder: Kiln's container image (built, run as non-root against the host's
//! Engine and registry, building a spec end to end), the reference `kiln.toml` (complete,
//! parses, shows the real defaults), the Kubernetes manifests (agree with each other and
//! with Kiln) and the systemd unit. With `CI=true` a missing Engine fails the image test.

mod common;

use common::{GitRepo, engine_available, free_port};
use kiln::config::{self, Config};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Kiln's own defaults, as its config parser resolves them.
fn default_config() -> Config {
    Config::from_toml("repo = '/srv/specs.git'\n", Path::new("defaults.toml")).unwrap()
}

fn default_port() -> u16 {
    let listen = default_config().listen;
    listen.rsplit_once(':').unwrap().1.parse().unwrap()
}

// ---- the reference config -------------------------------------------------------------------

/// `#key = value` and `#[table]` lines are commented-out settings; `# text` is prose.
fn is_setting(line: &str) -> bool {
    let Some(rest) = line.strip_prefix('#') else {
        return false;
    };
    let table = rest.starts_with('[') && rest.trim_end().ends_with(']');
    let key = rest.split_once(" = ").is_some_and(|(k, _)| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    });
    table || key
}

fn uncomment(text: &str) -> String {
    text.lines()
        .map(|l| if is_setting(l) { &l[1..] } else { l })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn reference_config_lists_every_key_parses_and_shows_the_real_defaults() {
    let text = read("deploy/kiln.toml");
    // As shipped (and copied into the image as /etc/kiln/kiln.toml) it sets nothing.
    let shipped: toml::Table = toml::from_str(&text).unwrap();
    assert!(
        shipped.is_empty(),
        "deploy/kiln.toml must only hold commented-out settings: {shipped:?}"
    );
    assert!(
        matches!(
            Config::from_toml(&text, Path::new("kiln.toml")),
            Err(config::ConfigError::NoRepo)
        ),
        "the shipped file parses and only lacks `repo`"
    );

    // Uncommented, every setting parses with Kiln's own parser (unknown keys are errors).
    let all = uncomment(&text);
    let parsed = Config::from_toml(&all, Path::new("deploy/kiln.toml (uncommented)"));
    assert!(parsed.is_ok(), "{:?}", parsed.err());

    // Complete: the keys set are exactly the keys Kiln accepts.
    let table: toml::Table = toml::from_str(&all).unwrap();
    let documented: BTreeSet<String> = table.keys().cloned().collect();
    let accepted: BTreeSet<String> = config::file_keys().into_iter().collect();
    let missing: Vec<_> = accepted.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "deploy/kiln.toml lacks keys Kiln accepts: {missing:?}"
    );
    assert_eq!(documented, accepted);

    // Each setting is explained, and a value shown without "(example value)" is the default:
    // setting it changes nothing in the resolved config.
    let lines: Vec<&str> = text.lines().collect();
    let base = "repo = '/srv/specs.git'\n";
    let defaults = format!("{:?}", default_config());
    let mut checked = Vec::new();
    let mut in_table = false;
    for (i, line) in lines.iter().enumerate() {
        if !is_setting(line) {
            continue;
        }
        if line.starts_with("#[") {
            in_table = true;
        }
        let mut comment = Vec::new();
        for prev in lines[..i].iter().rev() {
            if prev.starts_with("# ") || *prev == "#" {
                comment.push(*prev);
            } else if !is_setting(prev) || !in_table {
                break;
            }
        }
        assert!(
            !comment.is_empty(),
            "line {}: `{line}` has no explanation above it",
            i + 1
        );
        if in_table {
            continue;
        }
        let comment = comment.join("\n");
        let key = line[1..].split_once(" = ").unwrap().0;
        if comment.contains("(example value)") || key == "repo" {
            continue;
        }
        let with = Config::from_toml(&format!("{base}{}\n", &line[1..]), Path::new("k.toml"))
            .unwrap_or_else(|e| panic!("`{line}`: {e}"));
        assert_eq!(
            format!("{with:?}"),
            defaults,
            "`{line}` is shown as the default but is not Kiln's default (or mark it \"(example value)\")"
        );
        checked.push(key.to_string());
    }
    for key in [
        "branch",
        "listen",
        "poll_interval",
        "max_parallel_builds",
        "shutdown_grace",
        "watch",
    ] {
        assert!(
            checked.iter().any(|k| k == key),
            "{key}'s default was not compared: {checked:?}"
        );
    }
    assert!(
        read("README.md").contains("deploy/kiln.toml"),
        "README points to the reference config"
    );
}

#[test]
fn uncommenting_recognises_settings_only() {
    assert!(is_setting("#branch = \"main\""));
    assert!(is_setting("#[pull_secrets]"));
    assert!(is_setting("#corp-registry = \"registry.example.com\""));
    assert!(!is_setting("# branch = \"main\" is the default"));
    assert!(!is_setting("#   * Lines starting with"));
    assert!(!is_setting("branch = \"main\""));
    assert_eq!(uncomment("# prose\n#a = 1\n"), "# prose\na = 1");
}

// ---- Kubernetes ------------------------------------------------------------------------------

fn yaml_docs(text: &str, what: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .unwrap_or_else(|e| panic!("{what} is not valid YAML: {e}"))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

fn manifests() -> BTreeMap<String, Vec<Value>> {
    let dir = root().join("deploy/kubernetes");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            out.insert(name.clone(), yaml_docs(&text, &name));
        }
    }
    out
}

fn one<'a>(docs: &'a BTreeMap<String, Vec<Value>>, file: &str, kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs[file].iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "{file}: exactly one {kind}");
    found[0]
}

fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no `{name}` in {list}"))
}

fn env_of<'a>(container: &'a Value, name: &str) -> &'a str {
    named(&container["env"], name)["value"].as_str().unwrap()
}

fn dockerfile_uid() -> u64 {
    let text = read("deploy/Dockerfile");
    let at = text
        .find("--uid ")
        .expect("the Dockerfile creates a user with --uid");
    text[at + 6..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn kubernetes_manifests_agree_with_each_other_and_with_kiln() {
    let docs = manifests();
    let kustomization = &docs["kustomization.yaml"][0];
    let resources: BTreeSet<&str> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let expected: BTreeSet<&str> = docs
        .keys()
        .map(String::as_str)
        .filter(|f| *f != "kustomization.yaml" && *f != "secret-examples.yaml")
        .collect();
    assert_eq!(
        resources, expected,
        "kustomize applies every manifest but the secret examples"
    );

    let deployment = one(&docs, "deployment.yaml", "Deployment");
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 1, "sled is single-writer");
    assert_eq!(
        spec["strategy"]["type"], "Recreate",
        "never two pods on the data volume"
    );
    let pod_labels = &spec["template"]["metadata"]["labels"];
    for (k, v) in spec["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&pod_labels[k], v, "selector label {k}");
    }
    let pod = &spec["template"]["spec"];
    let kiln = named(&pod["containers"], "kiln");

    // Image: the name the Dockerfile and scripts build, pinned to this version by kustomize.
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(kiln["image"], format!("kiln/kiln:{version}").as_str());
    let image = named(&kustomization["images"], "kiln/kiln");
    assert_eq!(image["newTag"], version);

    // Ports: containerPort = KILN_LISTEN's port = Kiln's default port = the Service's target.
    let port = named(&kiln["ports"], "http");
    let listen = env_of(kiln, "KILN_LISTEN");
    let listen_port: u64 = listen.rsplit_once(':').unwrap().1.parse().unwrap();
    assert_eq!(port["containerPort"], listen_port);
    assert_eq!(listen_port, u64::from(default_port()));
    assert!(
        listen.starts_with("0.0.0.0:"),
        "reachable from outside the pod: {listen}"
    );
    let service = one(&docs, "service.yaml", "Service");
    for (k, v) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&pod_labels[k], v, "Service selector {k} matches the pod");
    }
    let service_port = named(&service["spec"]["ports"], "http");
    assert_eq!(service_port["targetPort"], "http");
    assert_eq!(service_port["port"], listen_port);
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let get = &kiln[probe]["httpGet"];
        assert_eq!(get["path"], "/healthz", "{probe}");
        assert_eq!(get["port"], "http", "{probe}");
    }

    // Non-root, with the image's uid; group access through fsGroup.
    let sc = &kiln["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], dockerfile_uid());
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(pod["securityContext"]["fsGroup"], dockerfile_uid());
    assert_eq!(pod["automountServiceAccountToken"], false);

    // Volumes: every mount has a volume, every volume is mounted, and each names a manifest.
    let volumes: BTreeMap<&str, &Value> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    let containers: Vec<&Value> = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(pod["initContainers"].as_array().into_iter().flatten())
        .collect();
    let mut mounted = BTreeSet::new();
    for c in &containers {
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let name = m["name"].as_str().unwrap();
            assert!(
                volumes.contains_key(name),
                "{}: mount of unknown volume {name}",
                c["name"]
            );
            mounted.insert(name);
        }
    }
    assert_eq!(
        mounted,
        volumes.keys().copied().collect(),
        "every volume is mounted"
    );
    let mount_of = |name: &str| -> String {
        kiln["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("kiln does not mount {name}"))["mountPath"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let pvc = one(&docs, "pvc.yaml", "PersistentVolumeClaim");
    assert_eq!(
        volumes["data"]["persistentVolumeClaim"]["claimName"],
        pvc["metadata"]["name"]
    );
    assert_eq!(pvc["spec"]["accessModes"][0], "ReadWriteOnce");
    assert_eq!(mount_of("data"), env_of(kiln, "KILN_DATA_DIR"));
    let configmap = one(&docs, "configmap.yaml", "ConfigMap");
    assert_eq!(
        volumes["config"]["configMap"]["name"],
        configmap["metadata"]["name"]
    );
    assert_eq!(mount_of("config"), "/etc/kiln/kiln.toml");
    assert_eq!(
        kiln["args"],
        serde_json::json!(["serve", "--config", "/etc/kiln/kiln.toml"])
    );

    // Secrets: the volumes name the example Secrets; nothing but placeholders in them.
    let secrets: BTreeMap<&str, &Value> = docs["secret-examples.yaml"]
        .iter()
        .map(|s| {
            assert_eq!(s["kind"], "Secret");
            (s["metadata"]["name"].as_str().unwrap(), s)
        })
        .collect();
    let registry = secrets[volumes["registry-credentials"]["secret"]["secretName"]
        .as_str()
        .unwrap()];
    assert_eq!(registry["type"], "kubernetes.io/dockerconfigjson");
    let dockerconfig: Value = serde_json::from_str(
        registry["stringData"][".dockerconfigjson"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert!(dockerconfig["auths"].is_object());
    let item = &volumes["registry-credentials"]["secret"]["items"][0];
    assert_eq!(item["key"], ".dockerconfigjson");
    let webhook = secrets[volumes["webhook-secret"]["secret"]["secretName"]
        .as_str()
        .unwrap()];
    for secret in secrets.values() {
        for (key, value) in secret["stringData"].as_object().unwrap() {
            assert!(
                value.as_str().unwrap().contains("REPLACE-ME"),
                "{key} is a placeholder"
            );
        }
        assert!(
            secret.get("data").is_none(),
            "no base64 blobs that could hide a real value"
        );
    }

    // The ConfigMap's kiln.toml is a valid Kiln config that points at those mounts.
    let toml_text = configmap["data"]["kiln.toml"].as_str().unwrap();
    let config = Config::from_toml(toml_text, Path::new("configmap.yaml kiln.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.docker_config.as_deref(),
        Some(
            Path::new(&mount_of("registry-credentials"))
                .join(item["path"].as_str().unwrap())
                .as_path()
        )
    );
    let webhook_key = webhook["stringData"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap();
    assert_eq!(
        config.webhook_secret_file.as_deref(),
        Some(
            Path::new(&mount_of("webhook-secret"))
                .join(webhook_key)
                .as_path()
        )
    );
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace > config.shutdown_grace.as_secs(),
        "the kubelet must wait longer ({grace} s) than shutdown_grace"
    );

    // The Engine: the DinD sidecar's socket, in the volume both containers mount.
    let socket = config
        .docker_host
        .as_deref()
        .unwrap()
        .strip_prefix("unix://")
        .unwrap();
    let dind = named(&pod["initContainers"], "dind");
    assert_eq!(dind["restartPolicy"], "Always", "a native sidecar");
    let args: Vec<&str> = dind["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args[0], "dockerd",
        "the entrypoint then adds no TCP listener"
    );
    assert!(
        args.contains(&format!("--host=unix://{socket}").as_str()),
        "{args:?}"
    );
    assert!(!args.iter().any(|a| a.contains("tcp://")), "{args:?}");
    assert!(
        args.contains(&format!("--group={}", dockerfile_uid()).as_str()),
        "{args:?}"
    );
    let dind_mount = named(&dind["volumeMounts"], "dind-socket")["mountPath"]
        .as_str()
        .unwrap();
    assert_eq!(Path::new(socket).parent().unwrap(), Path::new(dind_mount));
    assert_eq!(mount_of("dind-socket"), dind_mount);

    // Rendered the way `kubectl apply -k` renders it (offline).
    let Some(rendered) = kustomize() else {
        return;
    };
    let rendered = yaml_docs(&rendered, "kustomize output");
    let kinds: BTreeSet<&str> = rendered
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "ConfigMap",
            "Deployment",
            "PersistentVolumeClaim",
            "Service"
        ])
    );
    let deployment = rendered.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let kiln = named(
        &deployment["spec"]["template"]["spec"]["containers"],
        "kiln",
    );
    assert_eq!(
        kiln["image"],
        format!("{}:{version}", image["newName"].as_str().unwrap()).as_str()
    );
}

/// `kubectl kustomize deploy/kubernetes`: what `kubectl apply -k` would send, or `None` when
/// kubectl is missing outside CI.
fn kustomize() -> Option<String> {
    kustomize_dir("deploy/kubernetes")
}

/// `kubectl kustomize` of the kustomization in `dir` (relative to the repository).
fn kustomize_dir(dir: &str) -> Option<String> {
    if !common::have(common::Tool::Kubectl) {
        return None;
    }
    let out = Command::new("kubectl")
        .args(["kustomize", &root().join(dir).display().to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap())
}

/// `kubernetes-validate --strict` (the Kubernetes OpenAPI schemas, shipped with the tool, so
/// it needs no cluster): exit status and what it printed.
fn kubernetes_validate(file: &Path) -> (bool, String) {
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--no-warn"])
        .arg(file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn kubernetes_manifests_pass_the_kubernetes_schema() {
    let install = "scripts/test-all.sh installs it: pip install kubernetes-validate";
    if common::tools::which("kubernetes-validate").is_none() {
        common::tools::missing("`kubernetes-validate`", "not on PATH", install);
        return;
    }
    let Some(rendered) = kustomize() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let applied = dir.path().join("kustomized.yaml");
    std::fs::write(&applied, &rendered).unwrap();
    let (ok, text) = kubernetes_validate(&applied);
    assert!(ok, "the kustomized manifests fail the schema:\n{text}");
    for kind in [
        "deployment",
        "service",
        "persistentvolumeclaim",
        "configmap",
    ] {
        assert!(
            text.contains(&format!("passed for resource {kind}/")),
            "{kind} was not validated:\n{text}"
        );
    }
    // The example Secrets are applied by hand, not through the kustomization.
    let (ok, text) = kubernetes_validate(&root().join("deploy/kubernetes/secret-examples.yaml"));
    assert!(ok, "secret-examples.yaml fails the schema:\n{text}");
    assert_eq!(
        text.matches("passed for resource secret/").count(),
        2,
        "{text}"
    );

    // The check can fail: a misspelt field and a wrong type in the same Deployment are refused.
    let broken =
        rendered
            .replacen("strategy:", "strategyy:", 1)
            .replacen("replicas: 1", "replicas: one", 1);
    assert_ne!(broken, rendered);
    let bad = dir.path().join("broken.yaml");
    std::fs::write(&bad, broken).unwrap();
    let (ok, text) = kubernetes_validate(&bad);
    assert!(!ok, "a broken Deployment passed the schema check:\n{text}");
    assert!(text.contains("deployment/kiln"), "{text}");
}

/// The kiln.toml of a ConfigMap in rendered manifests.
fn configmap_toml(rendered: &[Value]) -> String {
    let map = rendered
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "kiln-config")
        .expect("the kiln-config ConfigMap");
    map["data"]["kiln.toml"].as_str().unwrap().to_string()
}

#[test]
fn the_worker_pool_overlay_agrees_with_kiln_and_passes_the_kubernetes_schema() {
    let Some(rendered_text) = kustomize_dir("deploy/kubernetes-workers") else {
        return;
    };
    let rendered = yaml_docs(&rendered_text, "the kustomized worker overlay");
    let of_kind = |kind: &str, name: &str| -> &Value {
        rendered
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind}/{name} in the overlay"))
    };
    let sts = of_kind("StatefulSet", "kiln-worker");
    let service = of_kind("Service", "kiln-worker");
    let deployment = of_kind("Deployment", "kiln");

    // A headless Service gives every pod its own DNS name, and it selects the pods.
    assert_eq!(service["spec"]["clusterIP"], "None");
    assert_eq!(sts["spec"]["serviceName"], service["metadata"]["name"]);
    let pod_labels = &sts["spec"]["template"]["metadata"]["labels"];
    for (key, value) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(
            &pod_labels[key], value,
            "the Service selects the worker pods"
        );
    }
    assert_eq!(
        sts["spec"]["selector"]["matchLabels"],
        service["spec"]["selector"]
    );
    let dockerd = named(&sts["spec"]["template"]["spec"]["containers"], "dockerd");
    let engine_port = named(&dockerd["ports"], "engine")["containerPort"]
        .as_u64()
        .unwrap();
    let service_port = named(&service["spec"]["ports"], "engine");
    assert_eq!(service_port["targetPort"], "engine");
    assert_eq!(service_port["port"].as_u64(), Some(engine_port));
    let args: Vec<&str> = dockerd["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.contains(&"--tlsverify"),
        "the Engine demands client certificates: {args:?}"
    );
    assert!(args.contains(&format!("--host=tcp://0.0.0.0:{engine_port}").as_str()));
    assert!(
        !args.iter().any(|a| a.starts_with("--host=unix")),
        "no other listener: {args:?}"
    );
    // Each pod keeps its own cache volume.
    let claim = &sts["spec"]["volumeClaimTemplates"][0];
    let docker_mount = named(
        &dockerd["volumeMounts"],
        claim["metadata"]["name"].as_str().unwrap(),
    );
    assert_eq!(docker_mount["mountPath"], "/var/lib/docker");

    // Kiln lists exactly the StatefulSet's pods as workers, by their DNS names, with the client
    // certificate mounted where cert_path says; and its Docker-in-Docker sidecar is gone.
    let text = configmap_toml(&rendered);
    let config = Config::from_toml(&text, Path::new("kubernetes-workers kiln.toml"))
        .unwrap_or_else(|e| panic!("the overlay's kiln.toml: {e}"));
    let replicas = sts["spec"]["replicas"].as_u64().unwrap() as usize;
    assert_eq!(
        config.workers.len(),
        replicas,
        "one [[workers]] table per pod"
    );
    assert!(
        config.docker_host.is_none(),
        "no docker_host beside [[workers]]"
    );
    let pod = deployment["spec"]["template"]["spec"].clone();
    let kiln = named(&pod["containers"], "kiln");
    let tls_mount = named(&kiln["volumeMounts"], "worker-tls");
    let tls_volume = named(&pod["volumes"], "worker-tls");
    assert_eq!(tls_volume["secret"]["secretName"], "kiln-worker-client");
    for (n, worker) in config.workers.iter().enumerate() {
        assert_eq!(worker.name, format!("kiln-worker-{n}"));
        assert_eq!(
            worker.endpoint.as_deref(),
            Some(format!("tcp://kiln-worker-{n}.kiln-worker:{engine_port}").as_str())
        );
        assert_eq!(worker.tls_verify, Some(true));
        assert_eq!(
            worker.cert_path.as_deref(),
            Some(Path::new(tls_mount["mountPath"].as_str().unwrap()))
        );
    }
    assert!(
        pod["initContainers"]
            .as_array()
            .is_none_or(|c| c.is_empty()),
        "no dind sidecar: {}",
        pod["initContainers"]
    );
    assert!(
        !rendered_text.contains("dind-socket"),
        "no dind volume is left"
    );

    // Every other key is the base's: the overlay's kiln.toml is the base's, edited.
    let base = configmap_toml(&yaml_docs(&kustomize().unwrap(), "the base"));
    let keys = |text: &str| -> BTreeMap<String, String> {
        let table: toml::Table = text.parse().unwrap();
        table
            .into_iter()
            .filter(|(k, _)| {
                ![
                    "docker_host",
                    "workers",
                    "max_parallel_builds",
                    "worker_probe_interval",
                ]
                .contains(&k.as_str())
            })
            .map(|(k, v)| (k, v.to_string()))
            .collect()
    };
    assert_eq!(
        keys(&text),
        keys(&base),
        "the overlay's kiln.toml drifted from the base's"
    );

    // The schema check, as for the base.
    let dir = tempfile::tempdir().unwrap();
    let applied = dir.path().join("workers.yaml");
    std::fs::write(&applied, &rendered_text).unwrap();
    let (ok, out) = kubernetes_validate(&applied);
    assert!(ok, "the worker overlay fails the schema:\n{out}");
    for resource in [
        "statefulset/kiln-worker",
        "service/kiln-worker",
        "deployment/kiln",
    ] {
        assert!(
            out.contains(&format!("passed for resource {resource}")),
            "{out}"
        );
    }
}

// ---- systemd ---------------------------------------------------------------------------------

fn unit_entries(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            assert!(line.ends_with(']'), "line {}: {line}", n + 1);
            section = line[1..line.len() - 1].to_string();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("line {}: not key=value: {line}", n + 1));
        assert!(!section.is_empty(), "line {}: outside a section", n + 1);
        out.push((section.clone(), k.to_string(), v.to_string()));
    }
    out
}

#[test]
fn systemd_unit_runs_kiln_hardened_and_waits_out_the_grace_period() {
    let text = read("deploy/kiln.service");
    let entries = unit_entries(&text);
    let get = |key: &str| -> Vec<&str> {
        entries
            .iter()
            .filter(|(s, k, _)| s == "Service" && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    };
    assert_eq!(
        get("ExecStart"),
        ["/usr/local/bin/kiln serve --config /etc/kiln/kiln.toml"]
    );
    assert_eq!(get("User"), ["kiln"]);
    assert_eq!(get("SupplementaryGroups"), ["docker"]);
    assert_eq!(get("StateDirectory"), ["kiln"]);
    assert!(get("Environment").contains(&"KILN_DATA_DIR=/var/lib/kiln"));
    assert_eq!(get("EnvironmentFile"), ["-/etc/kiln/kiln.env"]);
    assert_eq!(get("KillSignal"), ["SIGTERM"]);
    assert_eq!(get("Restart"), ["on-failure"]);
    let stop: u64 = get("TimeoutStopSec")[0].parse().unwrap();
    assert!(
        stop > default_config().shutdown_grace.as_secs(),
        "TimeoutStopSec {stop} > shutdown_grace"
    );
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("SystemCallFilter", "@system-service"),
    ] {
        assert!(get(key).contains(&value), "{key}={value}");
    }
    let sysusers = read("deploy/kiln.sysusers");
    assert!(
        sysusers.lines().any(|l| l.starts_with("u kiln ")),
        "{sysusers}"
    );

    // systemd's own checker, where it is installed: with ExecStart pointing at this build's
    // binary (verify wants it to exist), no complaint about the unit.
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze not installed: only parsed");
        return;
    };
    assert!(version.status.success());
    let tmp = tempfile::tempdir().unwrap();
    let unit = tmp.path().join("kiln.service");
    std::fs::write(
        &unit,
        text.replace("/usr/local/bin/kiln", common::kiln_bin()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("kiln.service"))
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify: {complaints:?}"
    );

    // The hardening, scored by systemd itself (0 = locked down, 10 = none): stays "OK".
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    match text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for kiln.service: "))
    {
        Some((_, rest)) => {
            let score: f64 = rest.split_whitespace().next().unwrap().parse().unwrap();
            assert!(score <= 2.0, "exposure {score} (was 1.3):\n{text}");
        }
        None => eprintln!("systemd-analyze security --offline not supported here: not scored"),
    }
}

// ---- the container image ---------------------------------------------------------------------

#[test]
fn dockerfile_builds_prebuilt_images_without_the_rust_stage() {
    let text = read("deploy/Dockerfile");
    let stage = |name: &str| {
        text.lines()
            .position(|l| l.starts_with("FROM ") && l.ends_with(&format!(" AS {name}")))
            .unwrap_or_else(|| panic!("no stage {name}"))
    };
    // The classic builder builds every stage up to --target in file order.
    assert!(stage("runtime") < stage("prebuilt"));
    assert!(stage("prebuilt") < stage("builder"));
    assert!(stage("builder") < stage("image"));
    let last_from = text.lines().rfind(|l| l.starts_with("FROM ")).unwrap();
    assert_eq!(
        last_from, "FROM runtime AS image",
        "the default target compiles from source"
    );
    assert!(text.contains("ARG BASE_IMAGE=debian:bookworm-slim"));
    assert!(text.contains("ARG BUILDER_IMAGE=rust:1-bookworm"));
    let ignore = read(".dockerignore");
    assert!(
        ignore.lines().any(|l| l == "*"),
        "the source context is an allowlist"
    );
    for path in ["deploy/kiln.toml", "deploy/kiln-healthcheck"] {
        assert!(text.contains(&format!("COPY {path} ")), "{path}");
        assert!(
            ignore.lines().any(|l| l == format!("!{path}")),
            "{path} in .dockerignore"
        );
    }
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("docker runs")
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Removes what the image test made, whatever happens.
struct Cleanup {
    container: String,
    volume: String,
    images: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", "-v", &self.container]);
        let _ = docker(&["volume", "rm", "-f", &self.volume]);
        for image in &self.images {
            let _ = docker(&["rmi", "-f", image]);
        }
    }
}

/// Runs `cmd` to completion, killed after `limit`; (success, stdout+stderr).
fn run_bounded(cmd: &mut Command, limit: Duration) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("out");
    let file = std::fs::File::create(&log).unwrap();
    let mut child = cmd
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .stdin(Stdio::null())
        .spawn()
        .expect("command starts");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    match status {
        Some(s) => (s.success(), out),
        None => (false, format!("{out}\n(killed after {limit:?})")),
    }
}

async fn wait_until<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    limit: Duration,
    logs: impl Fn() -> String,
    mut probe: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {limit:?}; container log:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The image this test builds carries the test profile's binary (stripped of debug info it is
/// ~30 MB, and `cargo test` has built it already); the release binary goes through the very
/// same Dockerfile stage (`scripts/build-image.sh` without `--binary`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_runs_as_non_root_and_builds_a_spec_through_the_host_engine() {
    if !engine_available() {
        return;
    }
    let id = std::process::id();
    let tag = format!("kiln/kiln:deploy-test-{id}");
    let name = format!("kiln-deploy-test-{id}");
    let mut cleanup = Cleanup {
        container: name.clone(),
        volume: format!("kiln-deploy-test-{id}"),
        images: vec![tag.clone()],
    };

    // Build with the script users run, from the local base image.
    let started = Instant::now();
    let (ok, out) = run_bounded(
        Command::new("bash")
            .arg(root().join("scripts/build-image.sh"))
            .args([
                "--binary",
                common::kiln_bin(),
                "--tag",
                &tag,
                "--base",
                "kiln/bookworm:minbase",
            ]),
        Duration::from_secs(600),
    );
    assert!(ok, "scripts/build-image.sh failed:\n{out}");
    let build_secs = started.elapsed().as_secs_f64();

    let inspect: Value = serde_json::from_str(&docker_ok(&["image", "inspect", &tag])).unwrap();
    let cfg = &inspect[0]["Config"];
    assert_eq!(cfg["User"], "kiln:kiln");
    assert_eq!(cfg["Entrypoint"], serde_json::json!(["kiln"]));
    assert_eq!(
        cfg["Cmd"],
        serde_json::json!(["serve", "--config", "/etc/kiln/kiln.toml"])
    );
    assert!(cfg["ExposedPorts"]["8080/tcp"].is_object(), "{cfg}");
    assert!(cfg["Volumes"]["/var/lib/kiln"].is_object(), "{cfg}");
    assert!(cfg["Healthcheck"]["Test"].is_array(), "{cfg}");
    assert_eq!(
        cfg["Labels"]["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    let env: Vec<&str> = cfg["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(env.contains(&"KILN_DATA_DIR=/var/lib/kiln"), "{env:?}");
    assert!(
        !env.iter()
            .any(|e| e.contains("SECRET") || e.contains("PASSWORD")),
        "{env:?}"
    );
    let size_mb = inspect[0]["Size"].as_f64().unwrap() / 1e6;

    // A spec repository made here, mounted read-only (owned by another uid than Kiln's).
    let tmp = tempfile::tempdir().unwrap();
    let mut repo = GitRepo::init(&tmp.path().join("repo"));
    repo.write(
        "deploy-smoke.yaml",
        "name: deploy-smoke\nbaseImage: 127.0.0.1:5000/kiln/bookworm:minbase\n",
    );
    let sha = repo.commit("a spec for the container");
    let expected_image = format!("127.0.0.1:5000/deploy-smoke:r1-{}", &sha[..7]);
    cleanup.images.push(expected_image.clone());
    cleanup
        .images
        .push("127.0.0.1:5000/deploy-smoke:latest".into());

    use std::os::unix::fs::MetadataExt as _;
    let socket_gid = std::fs::metadata("/var/run/docker.sock")
        .expect("the Engine socket /var/run/docker.sock")
        .gid();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let run_started = Instant::now();
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "host",
        "--group-add",
        &socket_gid.to_string(),
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
        "-v",
        &format!("{}:/specs:ro", repo.dir.display()),
        "-v",
        &format!("{}:/var/lib/kiln", cleanup.volume),
        "-e",
        &format!("KILN_LISTEN=127.0.0.1:{port}"),
        "-e",
        "KILN_REPO=file:///specs",
        "-e",
        "KILN_REGISTRY=127.0.0.1:5000",
        "-e",
        "KILN_POLL_INTERVAL=2",
        "--health-interval",
        "1s",
        "--health-start-period",
        "0s",
        &tag,
    ]);
    let logs = || {
        let out = docker(&["logs", &name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };

    let client = reqwest::Client::new();
    let job = wait_until("the job succeeded", Duration::from_secs(300), logs, || {
        let client = client.clone();
        let url = format!("{base}/api/v1/specs/deploy-smoke/jobs");
        async move {
            let jobs: Value = client.get(url).send().await.ok()?.json().await.ok()?;
            let job = jobs.get(0)?.clone();
            assert_ne!(job["status"], "failed", "{job}");
            (job["status"] == "succeeded").then_some(job)
        }
    })
    .await;
    let job_secs = run_started.elapsed().as_secs_f64();
    assert_eq!(job["image"], expected_image.as_str(), "{job}");
    let health: Value = client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["last_commit"], sha.as_str());
    // The image Kiln built is in the registry.
    let manifest = client
        .head(format!(
            "http://127.0.0.1:5000/v2/deploy-smoke/manifests/r1-{}",
            &sha[..7]
        ))
        .header(
            "Accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(manifest.status().as_u16(), 200);

    // Kiln runs as the image's user, and the image's own health check sees it healthy.
    assert_eq!(
        docker_ok(&["exec", &name, "id", "-u"]),
        dockerfile_uid().to_string()
    );
    let status = wait_until(
        "the container is healthy",
        Duration::from_secs(60),
        logs,
        || async {
            let s = docker_ok(&["inspect", "--format", "{{.State.Health.Status}}", &name]);
            (s != "starting").then_some(s)
        },
    )
    .await;
    assert_eq!(
        status,
        "healthy",
        "{}",
        docker_ok(&["inspect", "--format", "{{json .State.Health}}", &name])
    );

    // `docker stop` (SIGTERM to PID 1 = kiln): a graceful exit 0.
    let (ok, out) = run_bounded(
        Command::new("docker").args(["stop", "-t", "60", &name]),
        Duration::from_secs(90),
    );
    assert!(ok, "{out}");
    assert_eq!(
        docker_ok(&["inspect", "--format", "{{.State.ExitCode}}", &name]),
        "0",
        "{}",
        logs()
    );
    assert!(logs().contains("shutting down"), "{}", logs());

    eprintln!(
        "deploy image: built in {build_secs:.1} s, {size_mb:.0} MB; container start to job succeeded: {job_secs:.1} s"
    );
}
