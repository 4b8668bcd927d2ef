//! RBAC end to end: Roles and bindings for a ServiceAccount, kubectl auth can-i (--list).
