//! Label and field selectors (`?labelSelector=`, `?fieldSelector=`), parsed and matched as
//! upstream's `labels.Parse` and `fields.ParseSelector`, plus the per-kind field sets that
//! field selectors are matched against.

mod fields;
mod labels;

pub use fields::{FieldOperator, FieldRequirement, FieldSelector, object_fields};
pub use labels::{LabelSelector, Operator, Requirement, object_labels};
