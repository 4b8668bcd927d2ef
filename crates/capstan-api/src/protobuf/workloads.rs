//! k8s.io/api apps/v1 and batch/v1 messages (generated.proto field numbers).

use super::core_v1::{OBJECT_REFERENCE, POD_TEMPLATE_SPEC};
use super::meta::{LABEL_SELECTOR, OBJECT_META};
use super::schema::{Kind::*, Message, p, r, v};

pub static DEPLOYMENT: Message = Message {
    name: "Deployment",
    fields: &[
        v(1, "metadata", Msg(&OBJECT_META)),
        v(2, "spec", Msg(&DEPLOYMENT_SPEC)),
        v(3, "status", Msg(&DEPLOYMENT_STATUS)),
    ],
};

static DEPLOYMENT_SPEC: Message = Message {
    name: "DeploymentSpec",
    fields: &[
        p(1, "replicas", Int32),
        p(2, "selector", Msg(&LABEL_SELECTOR)),
        v(3, "template", Msg(&POD_TEMPLATE_SPEC)),
        v(4, "strategy", Msg(&DEPLOYMENT_STRATEGY)),
        v(5, "minReadySeconds", Int32),
        p(6, "revisionHistoryLimit", Int32),
        v(7, "paused", Bool),
        p(9, "progressDeadlineSeconds", Int32),
    ],
};

static DEPLOYMENT_STRATEGY: Message = Message {
    name: "DeploymentStrategy",
    fields: &[
        v(1, "type", Str),
        p(2, "rollingUpdate", Msg(&ROLLING_UPDATE_DEPLOYMENT)),
    ],
};

static ROLLING_UPDATE_DEPLOYMENT: Message = Message {
    name: "RollingUpdateDeployment",
    fields: &[
        p(1, "maxUnavailable", IntOrString),
        p(2, "maxSurge", IntOrString),
    ],
};

static DEPLOYMENT_STATUS: Message = Message {
    name: "DeploymentStatus",
    fields: &[
        v(1, "observedGeneration", Int64),
        v(2, "replicas", Int32),
        v(3, "updatedReplicas", Int32),
        v(7, "readyReplicas", Int32),
        v(4, "availableReplicas", Int32),
        v(5, "unavailableReplicas", Int32),
        p(9, "terminatingReplicas", Int32),
        p(8, "collisionCount", Int32),
    ],
};

pub static JOB: Message = Message {
    name: "Job",
    fields: &[
        v(1, "metadata", Msg(&OBJECT_META)),
        v(2, "spec", Msg(&JOB_SPEC)),
        v(3, "status", Msg(&JOB_STATUS)),
    ],
};

static JOB_SPEC: Message = Message {
    name: "JobSpec",
    fields: &[
        p(1, "parallelism", Int32),
        p(2, "completions", Int32),
        p(3, "activeDeadlineSeconds", Int64),
        p(7, "backoffLimit", Int32),
        p(12, "backoffLimitPerIndex", Int32),
        p(13, "maxFailedIndexes", Int32),
        p(4, "selector", Msg(&LABEL_SELECTOR)),
        p(5, "manualSelector", Bool),
        v(6, "template", Msg(&POD_TEMPLATE_SPEC)),
        p(8, "ttlSecondsAfterFinished", Int32),
        p(9, "completionMode", Str),
        p(10, "suspend", Bool),
        p(14, "podReplacementPolicy", Str),
        p(15, "managedBy", Str),
    ],
};

static JOB_STATUS: Message = Message {
    name: "JobStatus",
    fields: &[
        p(2, "startTime", Time),
        p(3, "completionTime", Time),
        v(4, "active", Int32),
        v(5, "succeeded", Int32),
        v(6, "failed", Int32),
        p(11, "terminating", Int32),
        v(7, "completedIndexes", Str),
        p(10, "failedIndexes", Str),
        p(9, "ready", Int32),
    ],
};

pub static CRON_JOB: Message = Message {
    name: "CronJob",
    fields: &[
        v(1, "metadata", Msg(&OBJECT_META)),
        v(2, "spec", Msg(&CRON_JOB_SPEC)),
        v(3, "status", Msg(&CRON_JOB_STATUS)),
    ],
};

static CRON_JOB_SPEC: Message = Message {
    name: "CronJobSpec",
    fields: &[
        v(1, "schedule", Str),
        p(8, "timeZone", Str),
        p(2, "startingDeadlineSeconds", Int64),
        v(3, "concurrencyPolicy", Str),
        p(4, "suspend", Bool),
        v(5, "jobTemplate", Msg(&JOB_TEMPLATE_SPEC)),
        p(6, "successfulJobsHistoryLimit", Int32),
        p(7, "failedJobsHistoryLimit", Int32),
    ],
};

static JOB_TEMPLATE_SPEC: Message = Message {
    name: "JobTemplateSpec",
    fields: &[
        v(1, "metadata", Msg(&OBJECT_META)),
        v(2, "spec", Msg(&JOB_SPEC)),
    ],
};

static CRON_JOB_STATUS: Message = Message {
    name: "CronJobStatus",
    fields: &[
        r(1, "active", Msg(&OBJECT_REFERENCE)),
        p(4, "lastScheduleTime", Time),
        p(5, "lastSuccessfulTime", Time),
    ],
};
