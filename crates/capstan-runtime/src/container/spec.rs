//! The OCI runtime spec (`config.json`) of a container, built from its CRI config, its image's
//! defaults and its sandbox, following upstream (containerd's CRI plugin) where they differ
//! from the OCI defaults, and clamped to what this host allows (see DESIGN.md, host facts).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability as OciCap, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder,
    LinuxDeviceCgroupBuilder, LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceBuilder,
    LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount, MountBuilder,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use super::image_source::ImageDefaults;
use super::user::Identity;
use crate::cri::runtime_service::{
    ContainerConfig, LinuxContainerSecurityContext, MountPropagation, RuntimeError,
};

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// containerd's default capability set (what Kubernetes containers get without add/drop).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Capability names by number, as in linux/capability.h.
const CAPABILITY_NAMES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Namespaces and files a container takes from its sandbox.
#[derive(Clone, Debug)]
pub struct SandboxShare {
    pub netns: PathBuf,
    pub ipcns: PathBuf,
    pub utsns: PathBuf,
    pub hostname: String,
    /// Host files bind-mounted at /etc/hosts, /etc/resolv.conf, /etc/hostname.
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
    pub hostname_file: PathBuf,
}

/// Facts about the host the spec must respect.
#[derive(Clone, Debug)]
pub struct HostLimits {
    /// Names (without CAP_) in this host's capability bounding set.
    pub bounding_caps: Vec<String>,
    /// Whether memory+swap limits can be set (v1 memory.memsw.* exists).
    pub memory_swap: bool,
}

impl HostLimits {
    /// Reads the bounding set of this process and the memory controller's files.
    pub fn detect(memory_dir: Option<&Path>) -> Self {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let mask = status
            .lines()
            .find_map(|l| l.strip_prefix("CapBnd:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0);
        HostLimits {
            bounding_caps: caps_from_mask(mask),
            memory_swap: memory_dir.is_some_and(|d| d.join("memory.memsw.limit_in_bytes").exists()),
        }
    }
}

/// Capability names whose bits are set in `mask`.
pub fn caps_from_mask(mask: u64) -> Vec<String> {
    CAPABILITY_NAMES
        .iter()
        .enumerate()
        .filter(|(bit, _)| mask & (1u64 << bit) != 0)
        .map(|(_, n)| n.to_string())
        .collect()
}

/// The process argv: Kubernetes `command` replaces ENTRYPOINT and drops CMD; `args` alone
/// replace CMD (upstream's rules).
pub fn process_args(
    config: &ContainerConfig,
    image: &ImageDefaults,
) -> Result<Vec<String>, RuntimeError> {
    let mut argv = if !config.command.is_empty() {
        let mut v = config.command.clone();
        v.extend(config.args.iter().cloned());
        v
    } else {
        let mut v = image.entrypoint.clone();
        if config.args.is_empty() {
            v.extend(image.cmd.iter().cloned());
        } else {
            v.extend(config.args.iter().cloned());
        }
        v
    };
    if argv.is_empty() {
        return Err(RuntimeError::InvalidArgument(
            "no command specified (neither the container nor its image has one)".into(),
        ));
    }
    argv.shrink_to_fit();
    Ok(argv)
}

/// The environment: the image's, overridden and extended by the container's, with PATH and
/// HOSTNAME defaults.
pub fn environment(config: &ContainerConfig, image: &ImageDefaults, hostname: &str) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| match env.iter_mut().find(|(key, _)| key == k) {
        Some(entry) => entry.1 = v.to_string(),
        None => env.push((k.to_string(), v.to_string())),
    };
    if !image.env.iter().any(|e| e.starts_with("PATH=")) {
        let (k, v) = DEFAULT_PATH.split_once('=').unwrap_or(("PATH", ""));
        set(k, v);
    }
    set("HOSTNAME", hostname);
    for e in &image.env {
        let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
        set(k, v);
    }
    for kv in &config.envs {
        set(&kv.key, &kv.value);
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

fn cap_name(raw: &str) -> String {
    let upper = raw.to_ascii_uppercase();
    upper.strip_prefix("CAP_").unwrap_or(&upper).to_string()
}

/// The capability set: privileged gets the whole bounding set; otherwise the default set with
/// add/drop applied (`ALL` allowed on both sides). Always clamped to the host's bounding set.
pub fn capabilities(security: &LinuxContainerSecurityContext, host: &HostLimits) -> Vec<String> {
    let mut caps: Vec<String> = if security.privileged {
        host.bounding_caps.clone()
    } else {
        let mut caps: Vec<String> = DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect();
        if let Some(c) = &security.capabilities {
            let add: Vec<String> = c.add_capabilities.iter().map(|n| cap_name(n)).collect();
            let drop: Vec<String> = c.drop_capabilities.iter().map(|n| cap_name(n)).collect();
            if add.iter().any(|a| a == "ALL") {
                caps = host.bounding_caps.clone();
            } else {
                caps.extend(add);
            }
            if drop.iter().any(|d| d == "ALL") {
                caps.clear();
                if let Some(c) = &security.capabilities {
                    caps.extend(c.add_capabilities.iter().map(|n| cap_name(n)));
                    caps.retain(|c| c != "ALL");
                }
            } else {
                caps.retain(|c| !drop.contains(c));
            }
        }
        caps
    };
    caps.retain(|c| host.bounding_caps.contains(c));
    caps.sort();
    caps.dedup();
    caps
}

/// Everything [`build`] needs.
#[derive(Clone, Debug)]
pub struct SpecInput<'a> {
    pub config: &'a ContainerConfig,
    pub image: &'a ImageDefaults,
    pub rootfs: &'a Path,
    pub identity: &'a Identity,
    pub sandbox: &'a SandboxShare,
    pub cgroups_path: &'a str,
    pub host: &'a HostLimits,
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, RuntimeError> {
    Ok(MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()?)
}

fn bind(
    dest: &str,
    source: &Path,
    readonly: bool,
    propagation: &str,
) -> Result<Mount, RuntimeError> {
    let mut options = vec!["rbind".to_string(), propagation.to_string()];
    options.push(if readonly { "ro" } else { "rw" }.to_string());
    Ok(MountBuilder::default()
        .destination(dest)
        .typ("bind")
        .source(source)
        .options(options)
        .build()?)
}

fn mounts(input: &SpecInput<'_>) -> Result<Vec<Mount>, RuntimeError> {
    let privileged = input.config.linux.security_context.privileged;
    let sys_mode = if privileged { "rw" } else { "ro" };
    let mut m = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", sys_mode],
        )?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", sys_mode],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
    ];
    let user_paths: HashSet<&str> = input
        .config
        .mounts
        .iter()
        .map(|m| m.container_path.as_str())
        .collect();
    let sandbox_files = [
        ("/etc/hosts", &input.sandbox.hosts),
        ("/etc/resolv.conf", &input.sandbox.resolv_conf),
        ("/etc/hostname", &input.sandbox.hostname_file),
    ];
    for (dest, source) in sandbox_files {
        if !user_paths.contains(dest) {
            m.push(bind(dest, source, false, "rprivate")?);
        }
    }
    for user in &input.config.mounts {
        if !user.container_path.starts_with('/') {
            return Err(RuntimeError::InvalidArgument(format!(
                "mount path {:?} is not absolute",
                user.container_path
            )));
        }
        let propagation = match user.propagation {
            MountPropagation::Private => "rprivate",
            MountPropagation::HostToContainer => "rslave",
            MountPropagation::Bidirectional => "rshared",
        };
        m.push(bind(
            &user.container_path,
            &user.host_path,
            user.readonly,
            propagation,
        )?);
    }
    Ok(m)
}

fn namespace(typ: LinuxNamespaceType, path: Option<&Path>) -> Result<LinuxNamespace, RuntimeError> {
    let b = LinuxNamespaceBuilder::default().typ(typ);
    Ok(match path {
        Some(p) => b.path(p).build()?,
        None => b.build()?,
    })
}

/// Builds the spec.
pub fn build(input: &SpecInput<'_>) -> Result<Spec, RuntimeError> {
    let config = input.config;
    let security = &config.linux.security_context;
    let res = &config.linux.resources;
    let caps: HashSet<OciCap> = capabilities(security, input.host)
        .iter()
        .filter_map(|c| c.parse().ok())
        .collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()?;
    let user = UserBuilder::default()
        .uid(input.identity.uid)
        .gid(input.identity.gid)
        .additional_gids(input.identity.additional_gids.clone())
        .build()?;
    let cwd = config
        .working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .or_else(|| Some(input.image.working_dir.clone()).filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".to_string());
    if !cwd.starts_with('/') {
        return Err(RuntimeError::InvalidArgument(format!(
            "working directory {cwd:?} is not absolute"
        )));
    }
    let mut env = environment(config, input.image, &input.sandbox.hostname);
    if let Some(home) = &input.identity.home
        && !env.iter().any(|e| e.starts_with("HOME="))
    {
        env.push(format!("HOME={home}"));
    }
    let mut process = ProcessBuilder::default()
        .terminal(false)
        .user(user)
        .args(process_args(config, input.image)?)
        .env(env)
        .cwd(cwd)
        .capabilities(capabilities)
        .no_new_privileges(security.no_new_privs)
        .build()?;
    process.set_rlimits(None);
    if res.oom_score_adj != 0 {
        // Lowering the score needs CAP_SYS_RESOURCE, which this host's bounding set lacks.
        process.set_oom_score_adj(Some(res.oom_score_adj.clamp(0, 1000) as i32));
    }

    let mut resources = LinuxResourcesBuilder::default().devices(vec![
        LinuxDeviceCgroupBuilder::default()
            .allow(security.privileged)
            .access("rwm")
            .build()?,
    ]);
    if res.memory_limit_in_bytes > 0 {
        let mut mem = LinuxMemoryBuilder::default().limit(res.memory_limit_in_bytes);
        if input.host.memory_swap {
            mem = mem.swap(res.memory_limit_in_bytes);
        }
        resources = resources.memory(mem.build()?);
    }
    if res.cpu_shares > 0 || res.cpu_quota != 0 || res.cpu_period > 0 {
        let mut cpu = LinuxCpuBuilder::default();
        if res.cpu_shares > 0 {
            cpu = cpu.shares(res.cpu_shares as u64);
        }
        if res.cpu_quota != 0 {
            cpu = cpu.quota(res.cpu_quota);
        }
        if res.cpu_period > 0 {
            cpu = cpu.period(res.cpu_period as u64);
        }
        resources = resources.cpu(cpu.build()?);
    }
    if res.pids_limit > 0 {
        resources = resources.pids(LinuxPidsBuilder::default().limit(res.pids_limit).build()?);
    }

    let sandbox = input.sandbox;
    let mut linux = LinuxBuilder::default()
        .namespaces(vec![
            namespace(LinuxNamespaceType::Pid, None)?,
            namespace(LinuxNamespaceType::Mount, None)?,
            namespace(LinuxNamespaceType::Network, Some(&sandbox.netns))?,
            namespace(LinuxNamespaceType::Ipc, Some(&sandbox.ipcns))?,
            namespace(LinuxNamespaceType::Uts, Some(&sandbox.utsns))?,
        ])
        .cgroups_path(PathBuf::from(input.cgroups_path))
        .resources(resources.build()?)
        .build()?;
    if security.privileged {
        linux.set_masked_paths(None);
        linux.set_readonly_paths(None);
    } else {
        linux.set_masked_paths(Some(MASKED_PATHS.iter().map(|p| p.to_string()).collect()));
        linux.set_readonly_paths(Some(READONLY_PATHS.iter().map(|p| p.to_string()).collect()));
    }

    let root = RootBuilder::default()
        .path(input.rootfs)
        .readonly(security.readonly_rootfs)
        .build()?;
    let mut spec = SpecBuilder::default()
        .version("1.0.2-dev")
        .process(process)
        .root(root)
        .mounts(mounts(input)?)
        .linux(linux)
        .build()?;
    // The hostname belongs to the sandbox's UTS namespace, which the pause process named.
    spec.set_hostname(None);
    spec.set_annotations(None);
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::runtime_service::{Capability, KeyValue};

    fn image() -> ImageDefaults {
        ImageDefaults {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["default-arg".into()],
            env: vec!["PATH=/bin".into(), "A=image".into()],
            working_dir: "/srv".into(),
            user: String::new(),
        }
    }

    fn config(command: &[&str], args: &[&str]) -> ContainerConfig {
        ContainerConfig {
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn command_and_args_follow_upstream_rules() {
        let img = image();
        let argv = |c: &[&str], a: &[&str]| process_args(&config(c, a), &img).unwrap();
        assert_eq!(argv(&[], &[]), vec!["/entry", "default-arg"]);
        assert_eq!(argv(&[], &["x"]), vec!["/entry", "x"]);
        assert_eq!(argv(&["/cmd"], &[]), vec!["/cmd"]);
        assert_eq!(argv(&["/cmd"], &["y"]), vec!["/cmd", "y"]);
        let empty = ImageDefaults::default();
        assert!(process_args(&config(&[], &[]), &empty).is_err());
    }

    #[test]
    fn container_env_overrides_image_env_in_place() {
        let mut c = config(&[], &[]);
        c.envs = vec![
            KeyValue {
                key: "A".into(),
                value: "mine".into(),
            },
            KeyValue {
                key: "B".into(),
                value: "b=c".into(),
            },
        ];
        let env = environment(&c, &image(), "host1");
        assert_eq!(env, vec!["HOSTNAME=host1", "PATH=/bin", "A=mine", "B=b=c"]);
        let env = environment(&config(&[], &[]), &ImageDefaults::default(), "h");
        assert!(env[0].starts_with("PATH=/usr/local/sbin"));
    }

    #[test]
    fn capabilities_apply_add_drop_and_the_host_bounding_set() {
        let host = HostLimits {
            bounding_caps: caps_from_mask(0x000001fffeffffff),
            memory_swap: false,
        };
        assert!(!host.bounding_caps.contains(&"SYS_RESOURCE".to_string()));
        let sc = |add: &[&str], drop: &[&str], privileged: bool| LinuxContainerSecurityContext {
            privileged,
            capabilities: Some(Capability {
                add_capabilities: add.iter().map(|s| s.to_string()).collect(),
                drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
            }),
            ..Default::default()
        };
        let caps = capabilities(
            &sc(&["NET_ADMIN", "CAP_SYS_RESOURCE"], &["CAP_KILL"], false),
            &host,
        );
        assert!(caps.contains(&"NET_ADMIN".to_string()));
        assert!(!caps.contains(&"KILL".to_string()));
        assert!(!caps.contains(&"SYS_RESOURCE".to_string()));
        assert_eq!(caps.len(), DEFAULT_CAPABILITIES.len());
        assert_eq!(
            capabilities(&sc(&["NET_ADMIN"], &["ALL"], false), &host),
            vec!["NET_ADMIN"]
        );
        let all = capabilities(&sc(&[], &[], true), &host);
        assert!(all.contains(&"SYS_ADMIN".to_string()));
        assert!(!all.contains(&"SYS_RESOURCE".to_string()));
        for name in &all {
            assert!(name.parse::<OciCap>().is_ok(), "{name} unknown to oci-spec");
        }
    }
}
