//! Types shared by the three kinds.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// A reference to a Secret in the same namespace as the object that names it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretReference {
    /// Name of the Secret, in the same namespace.
    #[x_kube(validation = Rule::new("size(self) > 0 && size(self) <= 253").message("secret name must be 1 to 253 characters"))]
    pub name: String,
}

/// Who may approve a held statement, and how many of them must.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("size(self.users) + size(self.groups) > 0").message("approvers must name at least one user or group"))]
#[x_kube(validation = Rule::new("self.required >= 1").message("approvers.required must be at least 1"))]
#[x_kube(validation = Rule::new("size(self.groups) > 0 || size(self.users) == 0 || self.required <= size(self.users)").message("approvers.required cannot exceed the number of users when no group is named"))]
pub struct Approvers {
    /// Kubernetes usernames that may approve, exactly as the API server
    /// authenticates them (for example `alice` or `oidc:alice@example.com`).
    #[serde(default)]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.all(u, size(u) > 0 && size(u) <= 253)").message("approver usernames must be 1 to 253 characters"))]
    pub users: Vec<String>,
    /// Kubernetes groups whose members may approve (for example `dba`).
    #[serde(default)]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.all(g, size(g) > 0 && size(g) <= 253)").message("approver groups must be 1 to 253 characters"))]
    pub groups: Vec<String>,
    /// How many distinct approvers must approve before the statement runs.
    /// The requester never counts. Defaults to 1.
    #[serde(default = "default_required")]
    pub required: i32,
}

fn default_required() -> i32 {
    1
}

/// The status conditions of a Gatehouse object: a list-map keyed by `type`.
pub type Conditions = Vec<Condition>;
