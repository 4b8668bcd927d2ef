//! Cell formatting shared by the printers: ages, label maps, selectors, container lists.

use serde_json::Value;

use crate::selectors::LabelSelector;

/// Upstream's `duration.HumanDuration`: short, rounded-down durations such as `5s`, `3m20s`,
/// `2d3h`; a clock skew of up to a second reads as `0s`, more as `<invalid>`.
pub fn human_duration(d: jiff::SignedDuration) -> String {
    let seconds = d.as_secs();
    if seconds < -1 {
        return "<invalid>".to_string();
    }
    if seconds < 0 {
        return "0s".to_string();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        return with_remainder(minutes, "m", seconds % 60, "s");
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        return with_remainder(hours, "h", minutes % 60, "m");
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        return with_remainder(hours / 24, "d", hours % 24, "h");
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        return with_remainder(hours / 24 / 365, "y", (hours / 24) % 365, "d");
    }
    format!("{}y", hours / 24 / 365)
}

fn with_remainder(major: i64, major_unit: &str, minor: i64, minor_unit: &str) -> String {
    if minor == 0 {
        format!("{major}{major_unit}")
    } else {
        format!("{major}{major_unit}{minor}{minor_unit}")
    }
}

/// Upstream's `translateTimestampSince`: the age of an RFC 3339 timestamp, `<unknown>` when
/// it is absent or unparsable.
pub(crate) fn since(timestamp: Option<&Value>, now: jiff::Timestamp) -> String {
    match parse_time(timestamp) {
        Some(t) => human_duration(now.duration_since(t)),
        None => "<unknown>".to_string(),
    }
}

pub(crate) fn parse_time(timestamp: Option<&Value>) -> Option<jiff::Timestamp> {
    timestamp
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
}

/// The AGE cell of an object.
pub(crate) fn age(obj: &Value, now: jiff::Timestamp) -> Value {
    since(obj.pointer("/metadata/creationTimestamp"), now).into()
}

/// The NAME cell of an object.
pub(crate) fn name(obj: &Value) -> Value {
    str_at(obj, "/metadata/name").into()
}

/// The string at a JSON pointer, or "".
pub(crate) fn str_at<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// The integer at a JSON pointer, or 0.
pub(crate) fn int_at(obj: &Value, pointer: &str) -> i64 {
    obj.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

/// The array at a JSON pointer, or an empty slice.
pub(crate) fn array_at<'a>(obj: &'a Value, pointer: &str) -> &'a [Value] {
    obj.pointer(pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// The number of entries of the map or array at a JSON pointer.
pub(crate) fn len_at(obj: &Value, pointer: &str) -> i64 {
    let len = match obj.pointer(pointer) {
        Some(Value::Object(m)) => m.len(),
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    };
    i64::try_from(len).unwrap_or(i64::MAX)
}

/// `s`, or `<none>` when empty.
pub(crate) fn or_none(s: &str) -> String {
    if s.is_empty() {
        "<none>".to_string()
    } else {
        s.to_string()
    }
}

/// Upstream's `labels.FormatLabels`: `k=v` pairs sorted by key, `<none>` when empty.
pub(crate) fn format_labels(map: Option<&Value>) -> String {
    let Some(Value::Object(map)) = map else {
        return "<none>".to_string();
    };
    let mut pairs: Vec<String> = map
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    pairs.sort();
    or_none(&pairs.join(","))
}

/// `metav1.LabelSelectorAsSelector(sel).String()`: "" for an absent or empty selector,
/// `<error>` for an invalid one.
pub(crate) fn selector_string(sel: Option<&Value>) -> String {
    let Some(sel) = sel.filter(|s| !s.is_null()) else {
        return String::new();
    };
    let parsed = serde_json::from_value::<
        k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    >(sel.clone())
    .ok()
    .and_then(|s| LabelSelector::from_label_selector(&s).ok());
    match parsed {
        Some(selector) => selector.to_string(),
        None => "<error>".to_string(),
    }
}

/// Upstream's `layoutContainerCells`: container names and images, comma-separated.
pub(crate) fn containers_and_images(pod_spec: Option<&Value>) -> (String, String) {
    let containers = pod_spec
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let names: Vec<&str> = containers.iter().map(|c| str_at(c, "/name")).collect();
    let images: Vec<&str> = containers.iter().map(|c| str_at(c, "/image")).collect();
    (names.join(","), images.join(","))
}

/// Upstream's `listWithMoreString`: at most `max` items, then `+ N more...`.
pub(crate) fn list_with_more(items: &[String], max: usize, empty: &str) -> String {
    let shown = items
        .iter()
        .take(max)
        .cloned()
        .collect::<Vec<_>>()
        .join(",");
    if items.len() > max {
        return format!("{shown} + {} more...", items.len() - max);
    }
    if shown.is_empty() {
        empty.to_string()
    } else {
        shown
    }
}
