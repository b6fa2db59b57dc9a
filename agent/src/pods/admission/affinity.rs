//! Whether a pod may run on this node at all: upstream's required node affinity
//! (`nodeSelector` and `requiredDuringSchedulingIgnoredDuringExecution`, as
//! component-helpers' `GetRequiredNodeAffinity(pod).Match(node)`) and untolerated taints
//! (`FindMatchingUntoleratedTaint` with the kubelet's effect filter, `NoExecute` only).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    NodeSelectorRequirement, NodeSelectorTerm, Pod, Taint, Toleration,
};

/// Whether the node, with `labels` and `name`, matches the pod's `nodeSelector` (every
/// label equal) and, if it has one, a term of its required node affinity.
#[must_use]
pub fn matches_node(pod: &Pod, labels: &BTreeMap<String, String>, name: &str) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return true;
    };
    let selector_matches = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    if !selector_matches {
        return false;
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    required.is_none_or(|selector| {
        selector
            .node_selector_terms
            .iter()
            .any(|term| term_matches(term, labels, name))
    })
}

/// A term matches when all its label expressions and all its field expressions do. An
/// empty term matches nothing; a term with an expression upstream cannot parse (an unknown
/// operator, values of the wrong count or form) matches nothing either.
fn term_matches(term: &NodeSelectorTerm, labels: &BTreeMap<String, String>, name: &str) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or(&[]);
    let fields = term.match_fields.as_deref().unwrap_or(&[]);
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    // Upstream parses the whole term first: one bad requirement voids it.
    let Some(labels_match) = expressions
        .iter()
        .map(|r| label_requirement(r, labels))
        .collect::<Option<Vec<bool>>>()
    else {
        return false;
    };
    let Some(fields_match) = fields
        .iter()
        .map(|r| field_requirement(r, name))
        .collect::<Option<Vec<bool>>>()
    else {
        return false;
    };
    labels_match.into_iter().chain(fields_match).all(|m| m)
}

/// One `matchExpressions` requirement against the labels; `None` if it does not parse.
fn label_requirement(
    r: &NodeSelectorRequirement,
    labels: &BTreeMap<String, String>,
) -> Option<bool> {
    let values = r.values.as_deref().unwrap_or(&[]);
    let value = labels.get(&r.key);
    let number = || -> Option<i64> {
        match values {
            [one] => one.parse().ok(),
            _ => None,
        }
    };
    let compare = |bound: i64, wanted: std::cmp::Ordering| {
        value
            .and_then(|v| v.parse::<i64>().ok())
            .is_some_and(|v| v.cmp(&bound) == wanted)
    };
    match r.operator.as_str() {
        "In" if !values.is_empty() => Some(value.is_some_and(|v| values.contains(v))),
        "NotIn" if !values.is_empty() => Some(value.is_none_or(|v| !values.contains(v))),
        "Exists" if values.is_empty() => Some(value.is_some()),
        "DoesNotExist" if values.is_empty() => Some(value.is_none()),
        "Gt" => number().map(|n| compare(n, std::cmp::Ordering::Greater)),
        "Lt" => number().map(|n| compare(n, std::cmp::Ordering::Less)),
        _ => None,
    }
}

/// One `matchFields` requirement: `metadata.name` is the only node field; `In` and `NotIn`
/// take exactly one value. `None` if it does not parse.
fn field_requirement(r: &NodeSelectorRequirement, name: &str) -> Option<bool> {
    let [value] = r.values.as_deref().unwrap_or(&[]) else {
        return None;
    };
    // Upstream's field set holds `metadata.name` alone; another key has no value.
    let field = (r.key == "metadata.name").then_some(name);
    match r.operator.as_str() {
        "In" => Some(field == Some(value.as_str())),
        "NotIn" => Some(field != Some(value.as_str())),
        _ => None,
    }
}

/// The first of the node's `NoExecute` taints that none of the pod's tolerations
/// tolerates. The kubelet looks at `NoExecute` alone: `NoSchedule` and `PreferNoSchedule`
/// are the scheduler's.
#[must_use]
pub fn untolerated_taint<'a>(pod: &Pod, taints: &'a [Taint]) -> Option<&'a Taint> {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or(&[]);
    taints
        .iter()
        .filter(|t| t.effect == "NoExecute")
        .find(|taint| !tolerations.iter().any(|t| tolerates(t, taint)))
}

/// Upstream's `Toleration.ToleratesTaint`: an empty effect or key matches any; operator
/// `Exists` matches any value, `Equal` (or empty) the same value; another operator nothing.
fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    let effect = t.effect.as_deref().unwrap_or_default();
    let key = t.key.as_deref().unwrap_or_default();
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match t.operator.as_deref().unwrap_or_default() {
        "" | "Equal" => {
            t.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default()
        }
        "Exists" => true,
        _ => false,
    }
}
