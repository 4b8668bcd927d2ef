//! The container runtime against the real kernel and real runc: sandboxes, containers, the
//! shim, CRI logs, exec, stop semantics, OOM kills, surviving the managing process, and
//! nothing left behind. Images are built from /bin/busybox by the tests themselves.
//!
//! Each test gets its own state dir, run dir and cgroup parent ([`RuntimeEnv`]), removes its
//! sandboxes and checks for leaks in Drop, also when the test fails.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use capstan_runtime::container::logs::{self, Stream};
use capstan_runtime::container::rootfs::{KernelMounter, Mounter, mounts_under};
use capstan_runtime::container::{ContainerRuntime, ImageSource, RuntimeConfig};
use capstan_runtime::cri::RuntimeService;
use capstan_runtime::cri::runtime_service::{
    ContainerConfig, ContainerFilter, ContainerMetadata, ContainerState, ContainerStatus,
    ExecRequest, KeyValue, LinuxContainerConfig, LinuxContainerResources,
    LinuxContainerSecurityContext, PodSandboxConfig, PodSandboxFilter, PodSandboxMetadata,
};
use capstan_runtime::image::ImageStore;
use capstan_runtime::testimage::{self, TestFile, TestImageOptions};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CAPSTAN: &str = env!("CARGO_BIN_EXE_capstan");
const PLAIN: &str = "test.local/busybox:plain";
const CONFIGURED: &str = "test.local/busybox:configured";
/// Upper bound for a container to reach a state the test waits for.
const WAIT: Duration = Duration::from_secs(20);

/// One isolated runtime: temp state/log/image dirs, its own run dir and cgroup parent.
struct RuntimeEnv {
    rt: tokio::runtime::Runtime,
    runtime: ContainerRuntime,
    data: TempDir,
    run_dir: PathBuf,
    cgroup_parent: String,
}

fn require_tools() {
    let runc = ["/usr/sbin/runc", "/usr/bin/runc"]
        .iter()
        .any(|p| Path::new(p).exists());
    assert!(
        runc,
        "runc is not installed: run scripts/install-deps.sh (Debian package runc)"
    );
    assert!(
        Path::new(testimage::BUSYBOX).exists(),
        "{} is missing: run scripts/install-deps.sh (Debian package busybox-static)",
        testimage::BUSYBOX
    );
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap_or("");
    assert_eq!(
        uid.split_whitespace().nth(1),
        Some("0"),
        "the runtime tests need root (effective uid 0)"
    );
}

impl RuntimeEnv {
    fn new(name: &str) -> RuntimeEnv {
        require_tools();
        let data = tempfile::Builder::new()
            .prefix(&format!("capstan-rt-{name}-"))
            .tempdir()
            .expect("temp dir");
        let tag = data
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(name)
            .to_string();
        let run_dir = PathBuf::from("/run").join(&tag);
        let cgroup_parent = format!("/{tag}");
        let store = ImageStore::open(&data.path().join("images")).expect("image store");
        import_test_images(&store, data.path());
        let images: Arc<dyn ImageSource> = Arc::new(store);
        let mut config = RuntimeConfig::new(
            data.path().join("runtime"),
            run_dir.clone(),
            PathBuf::from(CAPSTAN),
        );
        config.cgroup_parent = cgroup_parent.clone();
        let runtime = ContainerRuntime::new(config, images).expect("runtime");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        RuntimeEnv {
            rt,
            runtime,
            data,
            run_dir,
            cgroup_parent,
        }
    }

    fn log_dir(&self, pod: &str) -> PathBuf {
        self.data
            .path()
            .join("pods")
            .join(format!("default_{pod}_uid"))
    }

    fn sandbox_config(&self, pod: &str) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: PodSandboxMetadata {
                name: pod.into(),
                uid: "uid".into(),
                namespace: "default".into(),
                attempt: 0,
            },
            hostname: pod.into(),
            log_directory: self.log_dir(pod),
            hosts: Some("127.0.0.1 localhost\n10.0.0.9 peer\n".into()),
            resolv_conf: Some("nameserver 10.43.0.10\n".into()),
            labels: BTreeMap::from([("app".to_string(), pod.to_string())]),
            ..Default::default()
        }
    }

    /// Everything the runtime made is gone: mounts, cgroups, state, netns files.
    fn assert_clean(&self) {
        let leaks = self.leaks();
        assert!(leaks.is_empty(), "left behind: {leaks:#?}");
    }

    fn leaks(&self) -> Vec<String> {
        let mut leaks: Vec<String> = mounts_under(self.data.path());
        leaks.extend(mounts_under(&self.run_dir));
        leaks.extend(
            self.runtime
                .cgroup_mounts()
                .leftovers(&self.cgroup_parent)
                .into_iter()
                .map(|p| p.display().to_string()),
        );
        for dir in ["runtime/sandboxes", "runtime/containers"] {
            let path = self.data.path().join(dir);
            for e in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                leaks.push(e.path().display().to_string());
            }
        }
        for e in std::fs::read_dir(self.run_dir.join("netns"))
            .into_iter()
            .flatten()
            .flatten()
        {
            leaks.push(e.path().display().to_string());
        }
        leaks
    }
}

impl Drop for RuntimeEnv {
    fn drop(&mut self) {
        let runtime = self.runtime.clone();
        self.rt.block_on(async {
            if let Ok(pods) = runtime
                .list_pod_sandboxes(&PodSandboxFilter::default())
                .await
            {
                for p in pods {
                    if let Err(e) = runtime.remove_pod_sandbox(&p.id).await {
                        eprintln!("cleanup: removing sandbox {}: {e}", p.id);
                    }
                }
            }
        });
        for m in mounts_under(self.data.path())
            .into_iter()
            .chain(mounts_under(&self.run_dir))
        {
            let _ = KernelMounter.unmount(Path::new(&m));
        }
        let _ = std::fs::remove_dir_all(self.run_dir.join("netns"));
        let _ = std::fs::remove_dir_all(&self.run_dir);
        let parent = self.cgroup_parent.clone();
        self.runtime.cgroup_mounts().remove_empty(&parent, &parent);
    }
}

fn import_test_images(store: &ImageStore, dir: &Path) {
    let plain = dir.join("plain.tar");
    testimage::busybox_oci_archive(&plain, PLAIN).expect("building the plain test image");
    store
        .import_archive(&plain)
        .expect("importing the plain test image");
    let opts = TestImageOptions {
        entrypoint: Some(vec!["/bin/echo".into(), "from-entrypoint".into()]),
        cmd: Some(vec!["default-cmd".into()]),
        env: vec!["IMGVAR=from-image".into(), "FOO=image-foo".into()],
        working_dir: Some("/work".into()),
        user: Some("app".into()),
        files: vec![
            TestFile::file(
                "/etc/passwd",
                "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
            ),
            TestFile::file("/etc/group", "root:x:0:\napp:x:1000:\nextra:x:2000:app\n"),
            TestFile::Dir {
                path: "/work".into(),
                mode: 0o777,
            },
        ],
        ..Default::default()
    };
    let configured = dir.join("configured.tar");
    testimage::busybox_oci_archive_with(&configured, CONFIGURED, &opts)
        .expect("building the configured test image");
    store
        .import_archive(&configured)
        .expect("importing the configured test image");
}

fn container(name: &str, image: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: ContainerMetadata {
            name: name.into(),
            attempt: 0,
        },
        image: image.into(),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: PathBuf::from(format!("{name}/0.log")),
        ..Default::default()
    }
}

fn sh(name: &str, script: &str) -> ContainerConfig {
    container(name, PLAIN, &["sh", "-c", script])
}

async fn run(env: &RuntimeEnv, sandbox: &str, pod: &str, config: &ContainerConfig) -> String {
    let rt = &env.runtime;
    let id = rt
        .create_container(sandbox, config, &env.sandbox_config(pod))
        .await
        .unwrap_or_else(|e| panic!("create {}: {e:?}", config.metadata.name));
    rt.start_container(&id)
        .await
        .unwrap_or_else(|e| panic!("start {}: {e:?}", config.metadata.name));
    id
}

async fn wait_exited(env: &RuntimeEnv, id: &str) -> ContainerStatus {
    assert!(
        env.runtime.wait_container(id, WAIT).await.expect("wait"),
        "container {id} did not exit within {WAIT:?}"
    );
    env.runtime.container_status(id).await.expect("status")
}

/// The stdout messages of a container's CRI log; every line must parse.
fn log_lines(status: &ContainerStatus, stream: Stream) -> Vec<String> {
    let text = std::fs::read_to_string(&status.log_path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", status.log_path.display()));
    for line in text.lines() {
        assert!(
            logs::parse_record(line).is_some(),
            "not a CRI log line: {line:?}"
        );
    }
    logs::read_messages(&text)
        .into_iter()
        .filter(|(s, _)| *s == stream)
        .map(|(_, m)| m)
        .collect()
}

#[test]
fn image_entrypoint_cmd_and_kubernetes_overrides() {
    let env = RuntimeEnv::new("entry");
    env.rt.block_on(async {
        let rt = &env.runtime;
        let sb = rt
            .run_pod_sandbox(&env.sandbox_config("entry"), "")
            .await
            .expect("sandbox");
        let cases = [
            (
                container("image-defaults", CONFIGURED, &[]),
                "from-entrypoint default-cmd",
            ),
            (
                ContainerConfig {
                    args: vec!["my-args".into()],
                    ..container("args-only", CONFIGURED, &[])
                },
                "from-entrypoint my-args",
            ),
            (
                ContainerConfig {
                    args: vec!["x".into()],
                    ..container("command", CONFIGURED, &["/bin/echo", "overridden"])
                },
                "overridden x",
            ),
        ];
        for (config, want) in cases {
            let id = run(&env, &sb, "entry", &config).await;
            let status = wait_exited(&env, &id).await;
            assert_eq!(status.state, ContainerState::Exited);
            assert_eq!(
                (status.exit_code, status.reason.as_str()),
                (0, "Completed"),
                "{status:?}"
            );
            assert!(status.started_at.is_some() && status.finished_at.is_some());
            assert_eq!(
                log_lines(&status, Stream::Stdout),
                vec![want.to_string()],
                "{}",
                config.metadata.name
            );
            let expected_log = env
                .log_dir("entry")
                .join(format!("{}/0.log", config.metadata.name));
            assert_eq!(status.log_path, expected_log);
        }
        rt.remove_pod_sandbox(&sb).await.expect("remove sandbox");
        env.assert_clean();
    });
}

#[test]
fn env_working_dir_and_user_by_name() {
    let env = RuntimeEnv::new("user");
    env.rt.block_on(async {
        let rt = &env.runtime;
        let sb = rt.run_pod_sandbox(&env.sandbox_config("user"), "").await.expect("sandbox");
        let mut config = container(
            "env",
            CONFIGURED,
            &["sh", "-c", "echo $FOO $IMGVAR $HOSTNAME; pwd; id -u; id -g; id -G; cat /etc/hosts /etc/resolv.conf"],
        );
        config.envs = vec![KeyValue { key: "FOO".into(), value: "from-pod".into() }];
        let id = run(&env, &sb, "user", &config).await;
        let status = wait_exited(&env, &id).await;
        let out = log_lines(&status, Stream::Stdout);
        assert_eq!(status.exit_code, 0, "{status:?} {out:?}");
        assert_eq!(&out[..5], ["from-pod from-image user", "/work", "1000", "1000", "1000 2000"]);
        assert!(out.contains(&"10.0.0.9 peer".to_string()), "{out:?}");
        assert!(out.contains(&"nameserver 10.43.0.10".to_string()), "{out:?}");

        // securityContext runAsUser/runAsGroup win over the image's USER; workingDir over WORKDIR.
        let mut config = container("numeric", CONFIGURED, &["sh", "-c", "id -u; id -g; pwd"]);
        config.working_dir = Some("/tmp".into());
        config.linux.security_context = LinuxContainerSecurityContext {
            run_as_user: Some(4321),
            run_as_group: Some(99),
            ..Default::default()
        };
        let id = run(&env, &sb, "user", &config).await;
        let status = wait_exited(&env, &id).await;
        assert_eq!(log_lines(&status, Stream::Stdout), ["4321", "99", "/tmp"]);
        rt.remove_pod_sandbox(&sb).await.expect("remove sandbox");
        env.assert_clean();
    });
}

#[test]
fn exec_sync_stdin_and_tty() {
    let env = RuntimeEnv::new("exec");
    env.rt.block_on(async {
        let rt = &env.runtime;
        let sb = rt
            .run_pod_sandbox(&env.sandbox_config("exec"), "")
            .await
            .expect("sandbox");
        let id = run(
            &env,
            &sb,
            "exec",
            &container("sleeper", PLAIN, &["sleep", "1000"]),
        )
        .await;
        let cmd = |s: &str| vec!["sh".to_string(), "-c".to_string(), s.to_string()];
        let r = rt
            .exec_sync(&id, &cmd("echo out; echo err >&2; exit 3"), Some(WAIT))
            .await
            .expect("exec");
        assert_eq!(r.exit_code, 3);
        assert_eq!(String::from_utf8_lossy(&r.stdout), "out\n");
        assert_eq!(String::from_utf8_lossy(&r.stderr), "err\n");

        // Streaming with stdin: cat echoes what we send, then ends at EOF.
        let mut s = rt
            .exec(
                &id,
                &ExecRequest {
                    cmd: cmd("cat; exit 7"),
                    tty: false,
                    stdin: true,
                },
            )
            .await
            .expect("exec stream");
        let mut stdin = s.stdin.take().expect("stdin");
        stdin.write_all(b"hello stdin\n").await.expect("write");
        drop(stdin);
        let mut out = String::new();
        s.stdout.read_to_string(&mut out).await.expect("read");
        assert_eq!(out, "hello stdin\n");
        assert_eq!(
            tokio::time::timeout(WAIT, s.exit)
                .await
                .expect("exit in time")
                .expect("exit"),
            7
        );

        // With a TTY: the process sees a terminal on its stdin, input is echoed back.
        let mut s = rt
            .exec(
                &id,
                &ExecRequest {
                    cmd: cmd("test -t 0 && echo is-a-tty; read line; echo got:$line"),
                    tty: true,
                    stdin: true,
                },
            )
            .await
            .expect("exec tty");
        assert!(s.stderr.is_none());
        let mut stdin = s.stdin.take().expect("stdin");
        stdin.write_all(b"typed\r").await.expect("write");
        stdin.flush().await.expect("flush");
        let mut out = String::new();
        let read = tokio::time::timeout(WAIT, s.stdout.read_to_string(&mut out)).await;
        read.expect("tty output in time").expect("read tty");
        assert!(out.contains("is-a-tty"), "{out:?}");
        assert!(out.contains("got:typed"), "{out:?}");
        assert_eq!(
            tokio::time::timeout(WAIT, s.exit)
                .await
                .expect("exit in time")
                .expect("exit"),
            0
        );
        drop(stdin);

        rt.remove_pod_sandbox(&sb).await.expect("remove sandbox");
        env.assert_clean();
    });
}

#[test]
fn logs_are_in_cri_format() {
    let env = RuntimeEnv::new("logs");
    env.rt.block_on(async {
        let rt = &env.runtime;
        let sb = rt
            .run_pod_sandbox(&env.sandbox_config("logs"), "")
            .await
            .expect("sandbox");
        let script =
            "echo one; echo two >&2; head -c 40000 /dev/zero | tr '\\0' x; echo; printf tail";
        let id = run(&env, &sb, "logs", &sh("logger", script)).await;
        let status = wait_exited(&env, &id).await;
        let text = std::fs::read_to_string(&status.log_path).expect("log");
        let records: Vec<_> = text
            .lines()
            .map(|l| logs::parse_record(l).unwrap_or_else(|| panic!("bad CRI line {l:?}")))
            .collect();
        assert!(
            records.iter().any(|r| r.partial),
            "a 40000-byte line must be split into P records"
        );
        let stdout = log_lines(&status, Stream::Stdout);
        assert_eq!(stdout[0], "one");
        assert_eq!(stdout[1], "x".repeat(40000));
        assert_eq!(stdout[2], "tail");
        assert_eq!(log_lines(&status, Stream::Stderr), ["two"]);
        let first = records[0].time;
        assert!(
            records.iter().all(|r| r.time >= first),
            "timestamps go forward"
        );
        rt.remove_pod_sandbox(&sb).await.expect("remove sandbox");
        env.assert_clean();
    });
}

#[test]
fn memory_limit_exceeded_is_oom_killed() {
    let env = RuntimeEnv::new("oom");
    env.rt.block_on(async {
        let rt = &env.runtime;
        let sb = rt
            .run_pod_sandbox(&env.sandbox_config("oom"), "")
            .await
            .expect("sandbox");
        let mut config = sh("hog", "x=0123456789abcdef; while true; do x=$x$x; done");
        config.linux = LinuxContainerConfig {
            resources: LinuxContainerResources {
                memory_limit_in_bytes: 16 << 20,
                ..Default::default()
            },
            ..Default::default()
        };
        let id = run(&env, &sb, "oom", &config).await;
        let status = wait_exited(&env, &id).await;
        assert_eq!(
            (status.exit_code, status.reason.as_str()),
            (137, "OOMKilled"),
            "{status:?}"
        );
        rt.remove_pod_sandbox(&sb).await.expect("remove sandbox");
        env.assert_clean();
    });
}

#[test]
fn stop_honours_the_grace_period() {
    let env = RuntimeEnv::new("stop");
    env.rt.block_on(async {
        let rt = &env.runtime;
        let sb = rt
            .run_pod_sandbox(&env.sandbox_config("stop"), "")
            .await
            .expect("sandbox");
        let graceful = sh(
            "graceful",
            "trap 'sleep 1; exit 0' TERM; echo ready; while true; do sleep 0.1; done",
        );
        let stubborn = container("stubborn", PLAIN, &["sleep", "1000"]);
        let g = run(&env, &sb, "stop", &graceful).await;
        let s = run(&env, &sb, "stop", &stubborn).await;
        // The trap must be installed before the signal comes.
        let deadline = Instant::now() + WAIT;
        loop {
            let st = rt.container_status(&g).await.expect("status");
            if std::fs::read_to_string(&st.log_path)
                .unwrap_or_default()
                .contains("ready")
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "graceful container never got ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let t = Instant::now();
        rt.stop_container(&g, Duration::from_secs(10))
            .await
            .expect("stop graceful");
        let took = t.elapsed();
        let st = rt.container_status(&g).await.expect("status");
        assert_eq!(
            (st.state, st.exit_code),
            (ContainerState::Exited, 0),
            "{st:?}"
        );
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(4),
            "graceful stop took {took:?}"
        );

        let t = Instant::now();
        rt.stop_container(&s, Duration::from_secs(2))
            .await
            .expect("stop stubborn");
        let took = t.elapsed();
        let st = rt.container_status(&s).await.expect("status");
        assert_eq!(
            (st.state, st.exit_code),
            (ContainerState::Exited, 137),
            "{st:?}"
        );
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(5),
            "stubborn stop took {took:?}"
        );
        rt.remove_pod_sandbox(&sb).await.expect("remove sandbox");
        env.assert_clean();
    });
}

#[test]
fn containers_of_a_sandbox_share_network_and_hostname() {
    let env = RuntimeEnv::new("share");
    env.rt.block_on(async {
        let rt = &env.runtime;
        let sb = rt.run_pod_sandbox(&env.sandbox_config("share"), "").await.expect("sandbox");
        let status = rt.pod_sandbox_status(&sb).await.expect("sandbox status");
        let netns_ino = std::fs::metadata(&status.network_namespace).expect("netns bind mount").ino();
        let a = run(&env, &sb, "share", &container("a", PLAIN, &["sleep", "1000"])).await;
        let b = run(&env, &sb, "share", &container("b", PLAIN, &["sleep", "1000"])).await;
        let probe: Vec<String> = ["sh", "-c", "readlink /proc/self/ns/net; readlink /proc/self/ns/ipc; hostname; readlink /proc/self/ns/pid"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut outs = Vec::new();
        for id in [&a, &b] {
            let r = rt.exec_sync(id, &probe, Some(WAIT)).await.expect("exec");
            assert_eq!(r.exit_code, 0, "{r:?}");
            outs.push(String::from_utf8_lossy(&r.stdout).lines().map(String::from).collect::<Vec<_>>());
        }
        assert_eq!(outs[0][0], format!("net:[{netns_ino}]"));
        assert_eq!(outs[0][0], outs[1][0], "network namespace");
        assert_eq!(outs[0][1], outs[1][1], "IPC namespace");
        assert_eq!((outs[0][2].as_str(), outs[1][2].as_str()), ("share", "share"));
        assert_ne!(outs[0][3], outs[1][3], "each container has its own PID namespace");
        let list = rt.list_containers(&ContainerFilter { pod_sandbox_id: Some(sb.clone()), ..Default::default() }).await.expect("list");
        assert_eq!(list.len(), 2);
        assert!(list.iter().all(|c| c.state == ContainerState::Running));
        rt.remove_pod_sandbox(&sb).await.expect("remove sandbox");
        let pid = status.pid;
        assert!(!Path::new(&format!("/proc/{pid}/ns")).exists() || capstan_runtime::container::state::process_start_time(pid).is_none(), "pause process still running");
        assert!(!status.network_namespace.exists(), "netns bind mount left behind");
        env.assert_clean();
    });
}

#[test]
fn containers_survive_the_killed_manager() {
    let env = RuntimeEnv::new("survive");
    let flags = |cmd: &mut Command| {
        cmd.arg("--data-dir")
            .arg(env.data.path())
            .arg("--run-dir")
            .arg(&env.run_dir)
            .arg("--cgroup-parent")
            .arg(&env.cgroup_parent);
    };
    let mut manager = Command::new(CAPSTAN);
    manager
        .arg("run-pod")
        .arg("--image")
        .arg(PLAIN)
        .arg("--name")
        .arg("survivor");
    manager.arg("--log-dir").arg(env.log_dir("survivor"));
    flags(&mut manager);
    manager.args([
        "--",
        "sh",
        "-c",
        "echo hello from survivor; trap 'echo bye; exit 0' TERM; while true; do sleep 0.1; done",
    ]);
    let mut child = manager
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawning capstan run-pod");
    let mut container_id = None;
    let stdout = child.stdout.take().expect("stdout");
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("manager output");
        if let Some(id) = line.strip_prefix("container ") {
            container_id = Some(id.to_string());
            break;
        }
    }
    let id = container_id.expect("the manager reported no container");
    // kill -9 of the managing process: the shim and the container must not care.
    child.kill().expect("SIGKILL the manager");
    child.wait().expect("reap the manager");

    let mut ps = Command::new(CAPSTAN);
    ps.arg("ps").arg("-a");
    flags(&mut ps);
    let out = ps.output().expect("capstan ps");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "capstan ps failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = text
        .lines()
        .find(|l| l.contains("survivor"))
        .unwrap_or_else(|| panic!("no survivor row in:\n{text}"));
    assert!(
        row.starts_with(&id[..13]) && row.contains("Running") && row.contains(PLAIN),
        "{row}"
    );

    env.rt.block_on(async {
        let rt = &env.runtime;
        let status = rt
            .container_status(&id)
            .await
            .expect("status from a new process");
        assert_eq!(status.state, ContainerState::Running, "{status:?}");
        let deadline = Instant::now() + WAIT;
        while !log_lines(&status, Stream::Stdout).contains(&"hello from survivor".to_string()) {
            assert!(Instant::now() < deadline, "no output in the log");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        rt.stop_container(&id, Duration::from_secs(10))
            .await
            .expect("stop");
        let status = rt.container_status(&id).await.expect("status");
        assert_eq!(
            (status.state, status.exit_code),
            (ContainerState::Exited, 0),
            "{status:?}"
        );
        assert_eq!(
            log_lines(&status, Stream::Stdout),
            ["hello from survivor", "bye"]
        );
        rt.remove_pod_sandbox(&status.pod_sandbox_id)
            .await
            .expect("remove sandbox");
    });
    env.assert_clean();
    let mut rest = String::new();
    let _ = child.stdout.take().map(|mut s| s.read_to_string(&mut rest));
}
