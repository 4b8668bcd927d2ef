//! Printers of pods and the workload controllers (apps/v1, batch/v1).

use serde_json::{Value, json};

use super::format::{
    age, array_at, containers_and_images, format_labels, human_duration, int_at, name, or_none,
    parse_time, selector_string, since, str_at,
};
use super::{AGE, Column, NAME, Row, col, wide};

const CONTAINERS: Column = wide(
    "Containers",
    "string",
    "Names of each container in the template.",
);
const IMAGES: Column = wide(
    "Images",
    "string",
    "Images referenced by each container in the template.",
);
const SELECTOR: Column = wide(
    "Selector",
    "string",
    "The label selector of the pods this controller manages.",
);

pub(crate) const POD_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Ready",
        "string",
        "The aggregate readiness state of this pod for accepting traffic.",
    ),
    col(
        "Status",
        "string",
        "The aggregate status of the containers in this pod.",
    ),
    col(
        "Restarts",
        "string",
        "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
    ),
    AGE,
    wide(
        "IP",
        "string",
        "podIP address allocated to the pod. Routable at least within the cluster.",
    ),
    wide(
        "Node",
        "string",
        "NodeName indicates in which node this pod is scheduled.",
    ),
    wide(
        "Nominated Node",
        "string",
        "nominatedNodeName is set when this pod preempts other pods on the node.",
    ),
    wide(
        "Readiness Gates",
        "string",
        "If specified, all readiness gates will be evaluated for pod readiness.",
    ),
];

/// Restart counters of a group of container statuses.
#[derive(Default)]
struct Restarts {
    count: i64,
    last: Option<jiff::Timestamp>,
}

impl Restarts {
    fn add(&mut self, status: &Value) {
        self.count += int_at(status, "/restartCount");
        let finished = parse_time(status.pointer("/lastState/terminated/finishedAt"));
        if finished > self.last {
            self.last = finished;
        }
    }
}

fn is_restartable_init(pod: &Value, container_name: &str) -> bool {
    array_at(pod, "/spec/initContainers")
        .iter()
        .any(|c| str_at(c, "/name") == container_name && str_at(c, "/restartPolicy") == "Always")
}

fn has_condition(obj: &Value, ty: &str, reason: Option<&str>) -> bool {
    array_at(obj, "/status/conditions").iter().any(|c| {
        str_at(c, "/type") == ty
            && match reason {
                Some(r) => str_at(c, "/reason") == r,
                None => str_at(c, "/status") == "True",
            }
    })
}

/// Reason of a terminated container without one: `Signal:N` or `ExitCode:N`.
fn exit_reason(terminated: &Value) -> String {
    match int_at(terminated, "/signal") {
        0 => format!("ExitCode:{}", int_at(terminated, "/exitCode")),
        signal => format!("Signal:{signal}"),
    }
}

/// Upstream's pod STATUS, READY and RESTARTS logic (printPod).
pub(crate) fn pod(pod: &Value, now: jiff::Timestamp) -> Row {
    let phase = str_at(pod, "/status/phase");
    let mut reason = match str_at(pod, "/status/reason") {
        "" => phase.to_string(),
        r => r.to_string(),
    };
    if has_condition(pod, "PodScheduled", Some("SchedulingGated")) {
        reason = "SchedulingGated".to_string();
    }
    let init_specs = array_at(pod, "/spec/initContainers");
    let total = array_at(pod, "/spec/containers").len()
        + init_specs
            .iter()
            .filter(|c| str_at(c, "/restartPolicy") == "Always")
            .count();
    let mut ready = 0usize;
    let (initializing, init_restarts, sidecar_restarts) = init_status(pod, &mut reason, &mut ready);
    let mut restarts = init_restarts;
    if !initializing || has_condition(pod, "Initialized", None) {
        restarts = sidecar_restarts;
        let mut has_running = false;
        for status in array_at(pod, "/status/containerStatuses").iter().rev() {
            restarts.add(status);
            let state = &status["state"];
            if !str_at(state, "/waiting/reason").is_empty() {
                reason = str_at(state, "/waiting/reason").to_string();
            } else if let Some(terminated) = state.get("terminated") {
                reason = match str_at(terminated, "/reason") {
                    "" => exit_reason(terminated),
                    r => r.to_string(),
                };
            } else if status["ready"] == true && state.get("running").is_some() {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = if has_condition(pod, "Ready", None) {
                "Running"
            } else {
                "NotReady"
            }
            .to_string();
        }
    }
    let deleting = pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null());
    if deleting && str_at(pod, "/status/reason") == "NodeLost" {
        reason = "Unknown".to_string();
    } else if deleting && phase != "Succeeded" && phase != "Failed" {
        reason = "Terminating".to_string();
    }
    let restarts_cell: Value = match restarts.last {
        Some(last) if restarts.count != 0 => format!(
            "{} ({} ago)",
            restarts.count,
            human_duration(now.duration_since(last))
        )
        .into(),
        _ => restarts.count.into(),
    };
    let mut cells = vec![
        name(pod),
        format!("{ready}/{total}").into(),
        reason.into(),
        restarts_cell,
        age(pod, now),
    ];
    cells.extend(pod_wide_cells(pod));
    Row {
        cells,
        conditions: pod_row_conditions(pod),
    }
}

/// Walks init container statuses as upstream does; returns whether the pod is still
/// initializing, the restarts of all init containers and those of sidecars only.
fn init_status(pod: &Value, reason: &mut String, ready: &mut usize) -> (bool, Restarts, Restarts) {
    let specs = array_at(pod, "/spec/initContainers");
    let mut all = Restarts::default();
    let mut sidecars = Restarts::default();
    for (i, status) in array_at(pod, "/status/initContainerStatuses")
        .iter()
        .enumerate()
    {
        all.add(status);
        let restartable = is_restartable_init(pod, str_at(status, "/name"));
        if restartable {
            sidecars.add(status);
        }
        let state = &status["state"];
        let terminated = state.get("terminated");
        if terminated.is_some_and(|t| int_at(t, "/exitCode") == 0) {
            continue;
        }
        if restartable && status["started"] == true {
            if status["ready"] == true {
                *ready += 1;
            }
            continue;
        }
        *reason = if let Some(t) = terminated {
            match str_at(t, "/reason") {
                "" => format!("Init:{}", exit_reason(t)),
                r => format!("Init:{r}"),
            }
        } else {
            match str_at(state, "/waiting/reason") {
                "" | "PodInitializing" => format!("Init:{i}/{}", specs.len()),
                r => format!("Init:{r}"),
            }
        };
        return (true, all, sidecars);
    }
    (false, all, sidecars)
}

fn pod_wide_cells(pod: &Value) -> Vec<Value> {
    let ip = array_at(pod, "/status/podIPs")
        .first()
        .map(|p| str_at(p, "/ip"))
        .unwrap_or("");
    let gates = array_at(pod, "/spec/readinessGates");
    let readiness = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let conditions = array_at(pod, "/status/conditions");
        let true_count = gates
            .iter()
            .filter(|g| {
                let ty = str_at(g, "/conditionType");
                conditions
                    .iter()
                    .find(|c| str_at(c, "/type") == ty)
                    .is_some_and(|c| str_at(c, "/status") == "True")
            })
            .count();
        format!("{true_count}/{}", gates.len())
    };
    vec![
        or_none(ip).into(),
        or_none(str_at(pod, "/spec/nodeName")).into(),
        or_none(str_at(pod, "/status/nominatedNodeName")).into(),
        readiness.into(),
    ]
}

/// Finished pods carry a `Completed` row condition, as upstream marks them.
fn pod_row_conditions(pod: &Value) -> Vec<Value> {
    match str_at(pod, "/status/phase") {
        "Succeeded" | "Failed" => vec![json!({
            "type": "Completed",
            "status": "True",
            "reason": str_at(pod, "/status/reason"),
            "message": str_at(pod, "/status/message"),
        })],
        _ => Vec::new(),
    }
}

fn template_wide(obj: &Value) -> Vec<Value> {
    let (containers, images) = containers_and_images(obj.pointer("/spec/template/spec"));
    vec![
        containers.into(),
        images.into(),
        selector_string(obj.pointer("/spec/selector")).into(),
    ]
}

pub(crate) const DEPLOYMENT_COLUMNS: &[Column] = &[
    NAME,
    col("Ready", "string", "Number of the pod with ready state"),
    col(
        "Up-to-date",
        "integer",
        "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
    ),
    col(
        "Available",
        "integer",
        "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

pub(crate) fn deployment(obj: &Value, now: jiff::Timestamp) -> Row {
    let desired = obj
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let ready = format!("{}/{desired}", int_at(obj, "/status/readyReplicas"));
    let mut cells = vec![
        name(obj),
        ready.into(),
        int_at(obj, "/status/updatedReplicas").into(),
        int_at(obj, "/status/availableReplicas").into(),
        age(obj, now),
    ];
    cells.extend(template_wide(obj));
    cells.into()
}

pub(crate) const REPLICA_SET_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Desired",
        "integer",
        "Replicas is the number of desired pods.",
    ),
    col(
        "Current",
        "integer",
        "Replicas is the most recently observed number of replicas.",
    ),
    col(
        "Ready",
        "integer",
        "The number of ready replicas for this replica set.",
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

pub(crate) fn replica_set(obj: &Value, now: jiff::Timestamp) -> Row {
    let desired = obj
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let mut cells = vec![
        name(obj),
        desired.into(),
        int_at(obj, "/status/replicas").into(),
        int_at(obj, "/status/readyReplicas").into(),
        age(obj, now),
    ];
    cells.extend(template_wide(obj));
    cells.into()
}

pub(crate) const STATEFUL_SET_COLUMNS: &[Column] = &[
    NAME,
    col("Ready", "string", "Number of the pod with ready state"),
    AGE,
    CONTAINERS,
    IMAGES,
];

pub(crate) fn stateful_set(obj: &Value, now: jiff::Timestamp) -> Row {
    let desired = obj
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let ready = format!("{}/{desired}", int_at(obj, "/status/readyReplicas"));
    let (containers, images) = containers_and_images(obj.pointer("/spec/template/spec"));
    vec![
        name(obj),
        ready.into(),
        age(obj, now),
        containers.into(),
        images.into(),
    ]
    .into()
}

pub(crate) const DAEMON_SET_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Desired",
        "integer",
        "The total number of nodes that should be running the daemon pod.",
    ),
    col(
        "Current",
        "integer",
        "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod.",
    ),
    col(
        "Ready",
        "integer",
        "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running with a Ready Condition.",
    ),
    col(
        "Up-to-date",
        "integer",
        "The total number of nodes that are running updated daemon pod",
    ),
    col(
        "Available",
        "integer",
        "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available.",
    ),
    col(
        "Node Selector",
        "string",
        "NodeSelector is a selector which must be true for the pod to fit on a node.",
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

pub(crate) fn daemon_set(obj: &Value, now: jiff::Timestamp) -> Row {
    let mut cells = vec![name(obj)];
    for field in [
        "desiredNumberScheduled",
        "currentNumberScheduled",
        "numberReady",
        "updatedNumberScheduled",
        "numberAvailable",
    ] {
        cells.push(int_at(obj, &format!("/status/{field}")).into());
    }
    cells.push(format_labels(obj.pointer("/spec/template/spec/nodeSelector")).into());
    cells.push(age(obj, now));
    cells.extend(template_wide(obj));
    cells.into()
}

pub(crate) const JOB_COLUMNS: &[Column] = &[
    NAME,
    col("Status", "string", "Status of the job."),
    col(
        "Completions",
        "string",
        "The successful completions of the job out of the desired completions.",
    ),
    col("Duration", "string", "Time required to complete the job."),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

fn job_status(obj: &Value) -> &'static str {
    let deleting = obj
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null());
    if has_condition(obj, "Complete", None) {
        "Complete"
    } else if has_condition(obj, "Failed", None) {
        "Failed"
    } else if deleting {
        "Terminating"
    } else if has_condition(obj, "Suspended", None) {
        "Suspended"
    } else if has_condition(obj, "FailureTarget", None) {
        "FailureTarget"
    } else if has_condition(obj, "SuccessCriteriaMet", None) {
        "SuccessCriteriaMet"
    } else {
        "Running"
    }
}

pub(crate) fn job(obj: &Value, now: jiff::Timestamp) -> Row {
    let succeeded = int_at(obj, "/status/succeeded");
    let completions = match obj.pointer("/spec/completions").and_then(Value::as_i64) {
        Some(c) => format!("{succeeded}/{c}"),
        None => match int_at(obj, "/spec/parallelism") {
            p if p > 1 => format!("{succeeded}/1 of {p}"),
            _ => format!("{succeeded}/1"),
        },
    };
    let start = parse_time(obj.pointer("/status/startTime"));
    let end = parse_time(obj.pointer("/status/completionTime"));
    let duration = match (start, end) {
        (None, _) => String::new(),
        (Some(s), None) => human_duration(now.duration_since(s)),
        (Some(s), Some(e)) => human_duration(e.duration_since(s)),
    };
    let mut cells = vec![
        name(obj),
        job_status(obj).into(),
        completions.into(),
        duration.into(),
        age(obj, now),
    ];
    cells.extend(template_wide(obj));
    cells.into()
}

pub(crate) const CRON_JOB_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Schedule",
        "string",
        "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron.",
    ),
    col(
        "Timezone",
        "string",
        "The time zone name for the given schedule, see https://en.wikipedia.org/wiki/List_of_tz_database_time_zones.",
    ),
    col(
        "Suspend",
        "boolean",
        "This flag tells the controller to suspend subsequent executions, it does not apply to already started executions.",
    ),
    col(
        "Active",
        "integer",
        "A list of pointers to currently running jobs.",
    ),
    col(
        "Last Schedule",
        "string",
        "Information when was the last time the job was successfully scheduled.",
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

pub(crate) fn cron_job(obj: &Value, now: jiff::Timestamp) -> Row {
    let last = match obj.pointer("/status/lastScheduleTime") {
        Some(t) if !t.is_null() => since(Some(t), now),
        _ => "<none>".to_string(),
    };
    let suspend = match obj.pointer("/spec/suspend").and_then(Value::as_bool) {
        Some(true) => "True",
        Some(false) => "False",
        None => "<unset>",
    };
    let (containers, images) =
        containers_and_images(obj.pointer("/spec/jobTemplate/spec/template/spec"));
    let selector = match selector_string(obj.pointer("/spec/jobTemplate/spec/selector")) {
        s if s.is_empty() => "<none>".to_string(),
        s => s,
    };
    vec![
        name(obj),
        str_at(obj, "/spec/schedule").into(),
        or_none(str_at(obj, "/spec/timeZone")).into(),
        suspend.into(),
        super::format::len_at(obj, "/status/active").into(),
        last.into(),
        age(obj, now),
        containers.into(),
        images.into(),
        selector.into(),
    ]
    .into()
}
